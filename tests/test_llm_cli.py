"""decompose -> review -> validate -> plan -> run, through the real CLI and a loopback server."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from conftest import REPO

from tests.support.fake_openai import FakeOpenAI, Reply

PLAN = {
    "version": 1,
    "name": "topic-brief",
    "inputs": {"topic": {"type": "string", "default": "tides"}},
    "steps": [
        {"id": "facts", "prompt": "Three facts about {{ inputs.topic }}."},
        {
            "id": "angles",
            "prompt": "Two angles for an article, as JSON.",
            "output_schema": {
                "type": "object",
                "properties": {"angles": {"type": "array", "items": {"type": "string"}}},
                "required": ["angles"],
                "additionalProperties": False,
            },
        },
        {
            "id": "outline",
            "foreach": "steps.angles.output.angles",
            "prompt": "Outline '{{ item }}' using: {{ steps.facts.output }}",
        },
    ],
    "outputs": {"outline": "{{ steps.outline.output }}"},
}


@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def answer(request: dict) -> Reply:
    """A deterministic model: answers by what the prompt asks."""
    text = json.dumps(request)
    if "Two angles" in text:
        return Reply.json({"angles": ["history", "physics"]}, input_tokens=20, output_tokens=8)
    if "Outline" in text:
        angle = "history" if "'history'" in text else "physics"
        return Reply.text(f"outline of {angle}", input_tokens=30, output_tokens=4)
    return Reply.text("fact 1; fact 2; fact 3", input_tokens=12, output_tokens=6)


def test_decompose_review_validate_plan_run(cli, fake, tmp_path):
    fake.script(Reply.json(PLAN))
    made = cli(
        "decompose", "Write an article brief about a topic", "-o", "brief.yaml", "--model", "gpt-x"
    )
    assert made.exit_code == 0, made.stderr
    assert "wrote brief.yaml; review it, then: stepchain validate brief.yaml" in made.stderr
    text = (tmp_path / "brief.yaml").read_text()
    assert "# task: Write an article brief about a topic" in text and "# model: gpt-x" in text
    assert len(fake.requests) == 1

    assert cli("validate", "brief.yaml").exit_code == 0
    plan = json.loads(cli("plan", "brief.yaml", "--json").stdout)["steps"]
    assert {k: v["action"] for k, v in plan.items()} == {
        "facts": "run",
        "angles": "run",
        "outline": "unknown",
    }
    assert len(fake.requests) == 1  # planning asks no model

    fake.responder = answer
    run = cli.json("run", "brief.yaml", "--run-id", "brief-1")
    assert run["status"] == "completed"
    assert run["outputs"]["outline"] == ["outline of history", "outline of physics"]
    assert run["steps"]["angles"]["output"] == {"angles": ["history", "physics"]}
    assert run["steps"]["facts"]["usage"]["input_tokens"] == 12
    assert run["usage"]["input_tokens"] == 12 + 20 + 30 + 30
    assert run["usage"]["output_tokens"] == 6 + 8 + 4 + 4
    sent = len(fake.requests)
    assert sent == 1 + 4

    again = cli.json("run", "brief.yaml")
    assert len(fake.requests) == sent  # a second run sends no request at all
    assert all(s["cached"] for s in again["steps"].values())
    assert again["usage"] == {}
    shown = cli("runs", "show", "brief-1").stdout
    assert "tokens=18" in shown  # facts: 12 in + 6 out

    again_plan = json.loads(cli("plan", "brief.yaml", "--json").stdout)["steps"]
    assert {v["action"] for v in again_plan.values()} == {"replay"}
    refreshed = cli.json("run", "brief.yaml", "--refresh", "facts")
    assert len(fake.requests) == sent + 1
    assert refreshed["steps"]["facts"]["cached"] is False


def test_same_task_decomposes_from_cache(cli, fake):
    fake.script(Reply.json(PLAN))
    first = cli("decompose", "Write an article brief", "--max-steps", "5")
    second = cli("decompose", "Write an article brief", "--max-steps", "5")
    assert first.exit_code == second.exit_code == 0
    assert (
        first.stdout.split("# date")[1].split("\n", 1)[1]
        == second.stdout.split("# date")[1].split("\n", 1)[1]
    )
    assert len(fake.requests) == 1


def test_max_steps_beyond_fifty_is_a_usage_error(cli):
    result = cli("decompose", "anything", "--max-steps", "51")
    assert result.exit_code == 2
    assert "51 is not in the range 1<=x<=50" in result.stderr


def test_llm_pipeline_without_credentials_fails_before_anything_runs(cli, write):
    path = write("p.yaml", "version: 1\nname: t\nsteps: [{id: a, prompt: hi}]\n")
    result = cli("run", path)
    assert result.exit_code == 2
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: LLM steps need credentials: set OPENAI_API_KEY")
    assert "no runs recorded yet" in cli("runs", "list").stdout


def test_decompose_without_credentials_is_one_clear_line(cli):
    result = cli("decompose", "anything")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: LLM steps need credentials")


HOSTED_MCP = """version: 1
name: hosted-mcp
tools:
  docs:
    type: mcp
    server_url: https://mcp.example.invalid/sse
    require_approval: always
steps:
  - id: first
    prompt: A step without tools.
  - id: ask
    prompt: Look it up in the docs.
    tools: [docs]
"""


def test_hosted_mcp_needing_approval_fails_before_anything_runs(cli, write, fake):
    """The provider would ask mid-request, where nobody can answer: --approve, up front."""
    path = write("hosted.yaml", HOSTED_MCP)
    refused = cli("run", path, "--run-id", "refused")
    assert refused.exit_code == 1
    assert "hosted MCP server(s) docs require approval for every call" in refused.stderr
    assert "--approve" in refused.stderr
    assert fake.requests == []  # not even the step that offers no tools ran
    assert "refused" not in cli("runs", "list").stdout

    fake.responder = lambda request: Reply.text("docs" if "tools" in request else "plain")
    approved = cli.json("run", path, "--approve")
    assert approved["steps"]["ask"]["output"] == "docs"
    [tool] = next(r.json for r in fake.requests if "tools" in r.json)["tools"]
    assert tool["type"] == "mcp" and tool["server_url"] == "https://mcp.example.invalid/sse"
    assert tool["require_approval"] == "never"  # approved up front


def test_decompose_takes_a_temperature(cli, fake):
    fake.script(Reply.json(PLAN))
    result = cli("decompose", "Write an article brief", "--temperature", "0.7")
    assert result.exit_code == 0, result.stderr
    assert fake.requests[0].json["temperature"] == 0.7
    bad = cli("decompose", "anything", "--temperature", "3")
    assert bad.exit_code == 2 and "3.0 is not in the range 0<=x<=2" in bad.stderr


def test_every_option_has_a_description(cli):
    for command in (["validate"], ["plan"], ["run"], ["runs", "list"], ["runs", "show"]):
        lines = cli(*command, "--help").stdout.splitlines()
        flags = [line.split() for line in lines if line.strip().startswith(("--json", "--format"))]
        assert flags and all(len(words) > 2 for words in flags), (command, flags)
    assert "text: FILE:LINE:COL lines" in cli("validate", "--help").stdout
    assert "repeat for more steps" in cli("run", "--help").stdout
    assert "--log-format" in cli("--help").stdout


def test_help_lists_whole_command_summaries_the_environment_and_exit_codes(cli):
    text = cli("--help").stdout
    assert "..." not in text.split("Commands:")[1]  # no summary cut off
    assert "print every problem as FILE:LINE:COL: PATH:\n" in text
    assert "MESSAGE." in text
    for name in (
        "STEPCHAIN_HOME",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "STEPCHAIN_SETTINGS",
        "STEPCHAIN_LIMITS",
        "STEPCHAIN_MAX_ANSWER_BYTES",
        "STEPCHAIN_MAX_MCP_RESULT_BYTES",
        "STEPCHAIN_MAX_RENDER_SIZE",
    ):
        assert name in text
    codes = text.split("Exit codes:")[1].split()
    assert {"0", "1", "2", "70", "130"} <= set(codes)
    assert "timings, tokens." in cli("runs", "--help").stdout.split("Commands:")[1]
    for command in (["run"], ["resume"], ["runs", "list"], ["decompose"]):
        lines = [*cli(*command, "--help").stdout.splitlines(), ""]
        bare = [
            line.split()[0]
            for line, after in itertools.pairwise(lines)
            if line.startswith("  -")
            and not re.fullmatch(r"  -\S.*?\s{2,}[A-Z].*", line)  # help beside the flag
            and not re.match(r" {30,}[A-Z]", after)  # or on the next line
        ]
        assert not bare, (command, bare)  # every option says what it does
    assert "Sampling temperature" in cli("decompose", "--help").stdout


def test_decompose_writes_one_schema_modeline_wherever_the_file_goes(cli, fake, tmp_path):
    """The SPEC's modeline: the same for stdout, any -o folder and the API, and it resolves."""
    from stepchain.decomposer import decompose_to_yaml

    fake.default = Reply.json(PLAN)
    printed = cli("decompose", "Write an article brief").stdout
    cli("decompose", "Write an article brief", "-o", "deep/er/brief.yaml")
    written = (tmp_path / "deep" / "er" / "brief.yaml").read_text(encoding="utf-8")
    from_api = decompose_to_yaml("Write an article brief")
    modeline = "# yaml-language-server: $schema=../schemas/pipeline.schema.json"
    assert {printed.splitlines()[0], written.splitlines()[0], from_api.splitlines()[0]} == {
        modeline
    }
    # a pipeline in pipelines/ next to schemas/ (this repository's layout) finds the schema
    # `stepchain schema` prints
    target = (REPO / "pipelines" / modeline.split("=", 1)[1]).resolve()
    assert target.read_text(encoding="utf-8") == cli("schema").stdout


def test_decompose_to_a_place_it_cannot_write_says_so(cli, fake, write):
    fake.default = Reply.json(PLAN)
    write("taken", "a file, not a folder")
    result = cli("decompose", "Write an article brief", "-o", "taken/brief.yaml")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot write taken/brief.yaml: ")
    assert "hint: choose another -o" in result.stderr
