"""`stepchain validate`: every mistake in tests/broken/ reported exactly, through the real CLI.

Each file in tests/broken/ holds one kind of mistake a person or an LLM makes, and states what
the validator must print in `# expect: LINE:COL: PATH: MESSAGE` header lines.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from stepchain.pipeline.load import check_text, load_pipeline

REPO = Path(__file__).resolve().parent.parent
BROKEN = sorted((REPO / "tests" / "broken").glob("*.yaml"))
EXAMPLES = sorted((REPO / "pipelines").glob("**/*.yaml"))
OWN_VALID = sorted((REPO / "tests" / "pipelines").glob("valid_*.yaml"))
EXPECT = re.compile(r"^# expect: (.+)$", re.MULTILINE)
PROBLEM = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


def expected(path: Path) -> list[str]:
    return [f"{path}:{line}" for line in EXPECT.findall(path.read_text(encoding="utf-8"))]


def test_the_corpus_covers_at_least_45_kinds_of_mistake():
    assert len(BROKEN) >= 45
    for path in BROKEN:
        assert expected(path), f"{path.name} states no `# expect:` line"
        assert path.read_text().startswith("# Mistake: "), f"{path.name} does not say its mistake"


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_pipeline_is_reported_exactly(cli, path):
    result = cli("validate", path)
    assert result.stdout.splitlines() == expected(path)
    assert result.exit_code == 1


RAW_LIBRARY_WORDING = (
    "is not valid under any of the given schemas",
    "does not match any allowed form",
    "is not of type '",
    "{'",  # a Python repr of the user's mapping
    "Jinja was looking for",
    "end of print statement",
)


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_messages_are_written_for_people_not_copied_from_libraries(path):
    for line in expected(path):
        assert not any(raw in line for raw in RAW_LIBRARY_WORDING), line


def test_all_problems_are_reported_at_once_sorted_by_position(cli, write):
    path = write(
        "many.yaml",
        """
        version: 1
        name: many problems
        steps:
          - id: b
            prompt: "{{ steps.nope.output }}"
            retries: -2
          - id: a
            template: "{{ inputs.missing }}"
            needs: [ghost]
          - id: b
            run: [echo, hi]
            promt: typo
        """,
    )
    result = cli("validate", path)
    lines = result.stdout.splitlines()
    assert result.exit_code == 1
    assert lines == [
        f"{path}:2:7: name: name 'many problems' must start with a letter or digit and use only letters, digits, _, . and -",
        f"{path}:5:17: steps[0].prompt: unknown step 'nope': add a step with this id, or fix the reference (steps: a, b)",
        f"{path}:6:14: steps[0].retries: -2 is less than the minimum of 0",
        f"{path}:8:19: steps[1].template: unknown input 'missing': declare it under `inputs:`",
        f"{path}:9:13: steps[1].needs[0]: unknown step 'ghost' in needs: remove it, or add a step with this id (steps: a, b)",
        f"{path}:10:9: steps[2].id: duplicate step id 'b' (first used at line 4): give each step its own id",
        f"{path}:12:5: steps[2].promt: unknown field 'promt' (did you mean 'prompt'?)",
    ]
    positions = [tuple(map(int, PROBLEM.match(line).group("line", "col"))) for line in lines]
    assert positions == sorted(positions)


def test_problems_of_several_files_come_file_by_file(cli):
    first, second = BROKEN[0], BROKEN[1]
    result = cli("validate", second, first)
    assert result.stdout.splitlines() == sorted(expected(first) + expected(second))
    assert result.exit_code == 1


def test_json_format_lists_every_problem_with_its_position(cli):
    path = REPO / "tests" / "broken" / "negative-retries.yaml"
    result = cli("validate", path, "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "valid": False,
        "problems": [
            {
                "file": str(path),
                "line": 8,
                "col": 14,
                "path": "steps[0].retries",
                "message": "-1 is less than the minimum of 0",
            }
        ],
    }


def test_json_format_of_a_valid_file_says_valid(cli):
    result = cli("validate", OWN_VALID[0], "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "problems": []}


def test_github_format_prints_workflow_error_commands(cli):
    path = REPO / "tests" / "broken" / "cycle-two-steps.yaml"
    result = cli("validate", path, "--format", "github")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"::error file={path},line=6,col=9::steps[0].id: cycle: fetch -> summarise -> fetch: "
        "a step cannot wait for itself; remove one of these dependencies"
    ]


def test_github_format_escapes_percent_signs(cli, write):
    path = write("pct.yaml", 'version: 1\nname: "50%\\nof it"\nsteps: [{id: a, prompt: x}]\n')
    line = cli("validate", path, "--format", "github").stdout.strip()
    assert line.startswith(f"::error file={path},line=2,col=7::name: name '50%25\\nof it'")
    assert "\n" not in line


@pytest.mark.parametrize(
    "path", EXAMPLES + OWN_VALID, ids=[str(p.relative_to(REPO)) for p in EXAMPLES + OWN_VALID]
)
def test_example_pipelines_are_valid(cli, path):
    result = cli("validate", path)
    assert result.stdout == ""
    assert result.exit_code == 0
    assert "1 file(s) valid" in result.stderr


def test_valid_pipelines_exist_to_check():
    assert OWN_VALID, "tests/pipelines/valid_*.yaml is the pipeline every run can check"


def test_a_missing_file_is_a_usage_error(cli, tmp_path):
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "no such pipeline file" in result.stderr


def test_a_folder_is_a_usage_error(cli, tmp_path):
    assert cli("validate", tmp_path).exit_code == 2


def test_an_unknown_format_is_a_usage_error(cli):
    result = cli("validate", OWN_VALID[0], "--format", "xml")
    assert result.exit_code == 2
    assert "xml" in result.stderr


def test_validate_needs_a_file(cli):
    assert cli("validate").exit_code == 2


def test_a_real_process_exits_1_for_a_broken_file_and_0_for_a_valid_one(cli):
    broken = cli.proc("validate", REPO / "tests" / "broken" / "two-kinds.yaml")
    assert (broken.returncode, broken.stdout.splitlines()) == (
        1,
        expected(REPO / "tests" / "broken" / "two-kinds.yaml"),
    )
    assert cli.proc("validate", OWN_VALID[0]).returncode == 0


# -- StepChain 0.3 plan files ------------------------------------------------------------------
PLAN_03 = """
goal: Analyse quarterly sales
steps:
  - id: fetch
    prompt: Get the sales data
    tools: [web_search]
    timeout: 30
  - id: analyse
    prompt: "Analyse {{ steps.fetch.output }}"
    dependencies: [fetch]
    max_retries: 4
  - id: report
    prompt: Write the report
    dependencies: [analyse]
"""


def test_a_stepchain_03_plan_loads_as_version_1(write, cli):
    path = write("q4-plan.yaml", PLAN_03)
    assert cli("validate", path).exit_code == 0
    pipeline = load_pipeline(path)
    assert pipeline.name == "q4-plan"
    assert pipeline.description == "Analyse quarterly sales"
    assert pipeline.task_description == "Analyse quarterly sales"
    steps = pipeline.by_id
    assert steps["analyse"].needs == {"fetch"}
    assert steps["analyse"].retries == 4
    assert steps["report"].needs == {"analyse"}
    assert steps["fetch"].timeout == 30
    assert pipeline.tools["web_search"].type == "web_search"  # 0.3 named it without declaring it


def test_problems_in_a_03_plan_use_the_03_field_names(write, cli):
    path = write(
        "old.yaml",
        """
        goal: Broken plan
        steps:
          - id: fetch
            prompt: Get it
            max_retries: -1
            dependencies: [ghost]
        """,
    )
    assert cli("validate", path).stdout.splitlines() == [
        f"{path}:5:18: steps[0].max_retries: -1 is less than the minimum of 0",
        f"{path}:6:20: steps[0].dependencies[0]: unknown step 'ghost' in needs: remove it, or add a step with this id (steps: fetch)",
    ]


# -- references and inferred dependencies ------------------------------------------------------
def _needs(text: str) -> dict[str, set[str]]:
    problems, pipeline = check_text("refs.yaml", textwrap.dedent(text))
    assert problems == [], [p.format() for p in problems]
    return {s.id: set(s.needs) for s in pipeline.steps}


def test_dependencies_are_inferred_from_templates_without_needs():
    assert _needs(
        """
        version: 1
        name: refs
        steps:
          - {id: a, prompt: A}
          - {id: b, prompt: "{{ steps.a.output }}"}
          - {id: c, run: [echo, "{{ steps.b.output }}"]}
          - {id: d, tool: t, with: {x: ["{{ steps.c.status }}"]}}
          - {id: e, template: done, needs: [a]}
        tools:
          t: {type: function, function: "m:f"}
        """
    ) == {"a": set(), "b": {"a"}, "c": {"b"}, "d": {"c"}, "e": {"a"}}


def test_references_are_found_through_loops_set_filters_and_item_access():
    assert _needs(
        """
        version: 1
        name: refs
        steps:
          - {id: search, prompt: S}
          - {id: my-step, prompt: M}
          - {id: other, prompt: O}
          - id: loop
            template: "{% for r in steps.search.output %}{{ r }}{% endfor %}"
          - id: setter
            template: "{% set x = steps['my-step'].output %}{{ x }}"
          - id: filtered
            template: "{{ 'a' | replace('a', steps.loop.output) }}{{ [1] | map(attribute=steps.setter.status) | list }}"
          - id: quoted
            template: '{{ steps["other"]["output"] }}'
          - id: conditional
            when: steps.filtered.status == "completed"
            foreach: steps.search.output
            template: "{{ item }} {{ index }}"
        """
    ) == {
        "search": set(),
        "my-step": set(),
        "other": set(),
        "loop": {"search"},
        "setter": {"my-step"},
        "filtered": {"loop", "setter"},
        "quoted": {"other"},
        "conditional": {"filtered", "search"},
    }


def test_names_bound_in_a_template_shadow_the_context():
    assert _needs(
        """
        version: 1
        name: shadow
        steps:
          - {id: a, prompt: A}
          - id: b
            template: "{% for steps in [1, 2] %}{{ steps }}{% endfor %}{% set n = 3 %}{{ n }}{{ loop_free | default('') if false else '' }}"
        """.replace("{{ loop_free | default('') if false else '' }}", "")
    ) == {"a": set(), "b": set()}


def test_a_reference_in_a_multiline_flow_string_points_at_its_line(write, cli):
    path = write(
        "folded.yaml",
        """
        version: 1
        name: folded
        steps:
          - id: a
            prompt: "first line
              then {{ steps.zzz.output }}"
        """,
    )
    assert cli("validate", path).stdout.splitlines() == [
        f"{path}:6:15: steps[0].prompt: unknown step 'zzz': add a step with this id, or fix the reference (steps: a)"
    ]


# -- safety -------------------------------------------------------------------------------------
def test_an_alias_bomb_is_refused_with_a_message():
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 30)]
    text = "version: 1\nname: bomb\nsteps: [{id: a, prompt: x}]\nwith:\n" + "".join(
        f"  {row}\n" for row in rows
    )
    problems, pipeline = check_text("bomb.yaml", text)
    assert pipeline is None
    assert [p.message for p in problems] == [
        "the document expands to more than 1,000,000 values through aliases (an alias bomb?); "
        "refusing to load it: write the values out instead of aliasing"
    ]


def test_small_aliases_still_work():
    problems, pipeline = check_text(
        "alias.yaml",
        "version: 1\nname: a\ndefaults: {backoff: &b {initial: 2}}\n"
        "steps:\n  - {id: a, prompt: x, backoff: *b}\n  - {id: b, prompt: y, backoff: *b}\n",
    )
    assert problems == []
    assert [s.backoff.initial for s in pipeline.steps] == [2, 2]


def test_deep_nesting_is_refused_not_a_crash():
    text = (
        "version: 1\nname: deep\nsteps: [{id: a, prompt: x, with: {v: "
        + "[" * 5000
        + "]" * 5000
        + "}}]\n"
    )
    problems, pipeline = check_text("deep.yaml", text)
    assert pipeline is None
    assert problems[0].message == "nested more than 200 levels deep: flatten the structure"


def test_yaml_1_2_reads_plain_scalars_as_a_person_would():
    problems, pipeline = check_text(
        "types.yaml",
        'version: 1\nname: t\ninputs:\n  n: {type: number, default: 1.5e3}\n  s: {type: string, default: "on"}\n'
        "  o: {type: integer, default: 0o17}\n  z: {type: 'null', default: ~}\n"
        "steps: [{id: a, prompt: x, continue_on_error: true}]\n",
    )
    assert problems == []
    assert {k: v["default"] for k, v in pipeline.inputs.items()} == {
        "n": 1500.0,
        "s": "on",
        "o": 15,
        "z": None,
    }
    assert pipeline.steps[0].continue_on_error is True


def test_problems_are_the_same_with_the_pure_python_yaml_parser(monkeypatch):
    """Without libyaml, PyYAML's own parser must not change a single line or message."""
    from stepchain.pipeline import yaml_source
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class PurePython(Reader, Scanner, Parser):
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    files = [*BROKEN, *EXAMPLES, *OWN_VALID]
    usual = [check_text(str(p), p.read_text(encoding="utf-8"))[0] for p in files]
    monkeypatch.setattr(yaml_source, "_Parser", PurePython)
    assert [check_text(str(p), p.read_text(encoding="utf-8"))[0] for p in files] == usual


def test_a_step_without_an_id_still_has_its_templates_checked():
    problems, _ = check_text(
        "noid.yaml", "version: 1\nname: n\nsteps:\n  - prompt: '{{ steps.nope.output }}'\n"
    )
    assert [p.format() for p in problems] == [
        "noid.yaml:4:5: steps[0]: missing required field 'id': give the step a unique id, such as `id: fetch`",
        "noid.yaml:4:17: steps[0].prompt: unknown step 'nope': add a step with this id, or fix the reference",
    ]
