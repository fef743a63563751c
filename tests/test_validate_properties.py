"""Property tests: whatever text arrives, the loader answers with problems or a pipeline.

Random and mutated YAML goes through `check_text` and through `stepchain validate`: never an
exception, never a hang, every problem inside the file. Two shortcuts the validator takes for speed
(template skeletons, one schema evaluation per step shape) are checked against the long way round.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError
from jsonschema import Draft202012Validator
from stepchain.errors import Problem
from stepchain.pipeline import schema as schema_module
from stepchain.pipeline.definition import Pipeline
from stepchain.pipeline.graph import layers
from stepchain.pipeline.load import check_text
from stepchain.pipeline.yaml_source import load_source
from stepchain.templates import refs as templates

REPO = Path(__file__).resolve().parent.parent
SEEDS = [
    (REPO / "tests" / "pipelines" / "valid_research.yaml").read_text(encoding="utf-8"),
    *(p.read_text(encoding="utf-8") for p in sorted((REPO / "pipelines").glob("**/*.yaml"))),
]
FAST = settings(
    max_examples=40,  # ~250 examples in all, a few seconds
    deadline=timedelta(seconds=5),  # generous for a loaded 2-core machine; a hang still fails
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
    database=None,
)

YAML_CHARS = ":{}[],&*!|>'\"%@#\t\n-? ~0123456789abcxyz_."
VALUES = ["yes", "no", "on", "0755", "1:30", "~", "[]", "{}", '"{{ steps.x.output }}"', "{{ a }}",
          "-1", "7days", "*a", "&a x", "!!python/object x", "'", '"', "null", "3.5", "|", ">-"]  # fmt: skip


@st.composite
def mutated_pipeline(draw: st.DrawFn) -> str:
    """A valid pipeline with a few edits a careless person or a model might make."""
    lines = draw(st.sampled_from(SEEDS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "indent", "insert", "swap", "value"]))
        if edit == "delete" and len(lines) > 1:
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "indent":
            change = draw(st.sampled_from([" ", "  ", "\t", "-1", "-2"]))
            lines[i] = lines[i][int(change[1:]) :] if change.startswith("-") else change + lines[i]
        elif edit == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = (
                lines[i][:at] + draw(st.text(YAML_CHARS, min_size=1, max_size=4)) + lines[i][at:]
            )
        elif edit == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            left, right = lines[i].partition(": "), lines[j].partition(": ")
            if left[1] and right[1]:
                lines[i], lines[j] = left[0] + ": " + right[2], right[0] + ": " + left[2]
        elif edit == "value" and ": " in lines[i]:
            lines[i] = lines[i].partition(": ")[0] + ": " + draw(st.sampled_from(VALUES))
    return "\n".join(lines) + "\n"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def pipeline_shaped_data(draw: st.DrawFn) -> str:
    """YAML of a mapping that looks like a pipeline, with random values in random places."""
    step = st.dictionaries(
        st.sampled_from(["id", "prompt", "tool", "run", "template", "needs", "retries", "cache",
                         "when", "foreach", "with", "output_schema", "tools", "timeout", "backoff"]),
        json_values | st.sampled_from(["a", "b", "{{ steps.a.output }}", "{% for x in y %}"]),
        max_size=6,
    )  # fmt: skip
    doc = draw(
        st.fixed_dictionaries(
            {"version": st.sampled_from([1, 2, "1"]), "name": st.sampled_from(["p", "bad name"])},
            optional={
                "steps": st.lists(step, max_size=4) | json_values,
                "inputs": st.dictionaries(st.sampled_from(["a", "b-c"]), json_values, max_size=2),
                "tools": st.dictionaries(st.sampled_from(["t", "db"]), json_values, max_size=2),
                "outputs": json_values,
            },
        )
    )
    return yaml.safe_dump(doc, sort_keys=False)


def assert_answer(name: str, text: str) -> tuple[list[Problem], Pipeline | None]:
    problems, pipeline = check_text(name, text)
    assert isinstance(problems, list)
    assert (pipeline is None) == bool(problems)
    lines = len(re.split(r"\r\n|[\r\n\x85\u2028\u2029]", text)) + 1  # YAML's line breaks
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.file == name
        assert 1 <= problem.line <= lines, problem.format()
        assert problem.col >= 1, problem.format()
        assert isinstance(problem.message, str) and problem.message.strip()
    assert problems == sorted(problems)
    if pipeline is not None:
        assert isinstance(pipeline, Pipeline) and pipeline.steps
        deps = {s.id: s.needs for s in pipeline.steps}
        assert sum(len(layer) for layer in layers(deps)) == len(pipeline.steps)
    return problems, pipeline


@FAST
@given(mutated_pipeline())
def test_a_mutated_pipeline_gets_problems_or_a_pipeline(text):
    assert_answer("mutated.yaml", text)


@FAST
@given(st.text(YAML_CHARS, max_size=80) | st.text(max_size=40))
def test_random_text_gets_problems_or_a_pipeline(text):
    assert_answer("random.yaml", text)


@FAST
@given(pipeline_shaped_data())
def test_random_values_in_pipeline_places_get_problems_or_a_pipeline(text):
    assert_answer("shaped.yaml", text)


@settings(FAST, max_examples=20)
@given(mutated_pipeline())
def test_the_cli_answers_mutated_pipelines_with_exit_0_or_1(cli, tmp_path, text):
    path = tmp_path / "mutated.yaml"
    path.write_text(text, encoding="utf-8")
    result = cli("validate", path)
    problems, _ = check_text(str(path), text)
    assert result.exit_code == (1 if problems else 0)
    assert result.stdout.splitlines() == [p.format() for p in problems]


# -- the shortcuts agree with the long way round ---------------------------------------------
TEMPLATE_PIECES = [
    "text ", "\n", "{{ steps.a.output }}", "{{ steps['my-step'].output }}", '{{ steps["b"]["output"] }}',
    "{{ inputs.x | default('y') }}", "{% for r in steps.c.output %}", "{% endfor %}", "{% if x %}",
    "{% endif %}", "{# note #}", "{{ item }}", "{{ (steps.d.output | string)[:3] }}", "{{ ['s', 1] }}",
    "{{ foo.bar }}", "{% set v = steps.e.status %}", "{{ v }}", "{", "}", "{{", "}}", "{%", "%}", "'",
    '"', "steps.", "__k0__", "{% raw %}{{ steps.z }}{% endraw %}", "{{ x | to_json }}", "é",
    "{{ {'a': steps.f.output} }}", "{{ steps . g . output }}", "{{- env.HOME -}}", "\\",
    "{{ x | steps.h }}", "{% if x is inputs.k %}", "{{ x }}", "{% for steps in y %}",
]  # fmt: skip


def _parse(text: str, *, expression: bool, fast: bool):
    try:
        if fast:
            return templates.references(text, expression=expression)
        return templates.parsed_references(
            "{{ " + text + " }}" if expression else text
        )  # Jinja's parse
    except TemplateSyntaxError:
        return "syntax error"


@settings(FAST, max_examples=100)
@given(st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=8).map("".join), st.booleans())
def test_template_skeletons_find_exactly_what_jinja_finds(text, expression):
    fast = _parse(text, expression=expression, fast=True)
    if not expression and "{{" not in text and "{%" not in text:
        assert fast == []  # plain text is never parsed
    else:
        assert fast == _parse(text, expression=expression, fast=False)


def _schema_problems_the_long_way(source):
    """Every document through one full-schema validator, no per-shape cache."""
    validator = Draft202012Validator(schema_module.pipeline_schema())
    errors = validator.iter_errors(source.data)
    return {p for e in errors for p in schema_module._translate(source, e, (), source.data)}


@FAST
@given(mutated_pipeline() | pipeline_shaped_data())
def test_per_shape_schema_validation_matches_whole_document_validation(text):
    source = load_source("doc.yaml", text)
    if source.data is None:
        return
    assert set(schema_module.schema_problems(source)) == _schema_problems_the_long_way(source)
