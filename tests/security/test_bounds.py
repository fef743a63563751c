"""Everything is bounded: server waits, fan-out, non-JSON values; server text printed safely."""

from __future__ import annotations

import json

import pytest

from tests.support.fake_openai import FakeOpenAI, Reply


@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


PROMPT = """
version: 1
name: bounded
steps:
  - {id: ask, prompt: hi, model: m, timeout: 1, retries: 1}
"""


@pytest.mark.parametrize(
    "reply",
    [
        Reply.rate_limit(retry_after=99999),
        Reply.rate_limit(retry_after=None, retry_after_ms=float("inf")),
        Reply.error(429, "slow down", headers={"Retry-After": "inf"}),
    ],
)
def test_a_servers_retry_after_never_holds_a_step_past_its_timeout(cli, write, fake, reply):
    fake.script(reply, Reply.text("ok"))
    path = write("p.yaml", PROMPT)
    # were the wait not bounded, this would outlive the 60 s the test gives it; a wait for a
    # rate limit that would pass the step's timeout fails the step at once, saying so (SPEC §11)
    result = cli.proc("run", path, "--json", timeout=60)
    step = json.loads(result.stdout)["steps"]["ask"]
    assert step["status"] == "failed"
    # 99999 s is a known wait past the timeout; an infinite one is read as no usable value, so
    # the limiter backs off and the step's own timeout ends it
    assert step["error_kind"] in ("rate_limit", "timeout")


def test_control_codes_in_a_servers_error_never_reach_the_terminal(cli, write, fake):
    fake.script(Reply.error(400, "bad \x1b[2J\x1b]0;owned\x07request\x9b31m here\x07"))
    path = write("p.yaml", PROMPT)
    result = cli("run", path, "--json")
    error = json.loads(result.stdout)["steps"]["ask"]["error"]
    assert "bad request" in error and "here" in error
    for text in (error, result.stderr):
        assert not any(c in text for c in "\x1b\x07\x9b")


def test_control_codes_in_a_commands_stderr_are_stripped(cli, write):
    write("bad.sh", "printf 'oops \\033[31mred\\033[0m \\033]0;title\\007end' >&2; exit 1\n")
    path = write(
        "p.yaml",
        """
        version: 1
        name: ctl
        steps:
          - {id: bad, run: [sh, bad.sh], retries: 0}
        """,
    )
    result = cli("run", path, "--allow-run")
    assert result.exit_code == 1
    assert "step bad failed: command exited with status 1: oops red end" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_foreach_beyond_max_items_is_a_clear_error(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: fan
        inputs:
          xs: {type: array, default: [1, 2, 3, 4]}
        steps:
          - {id: each, foreach: inputs.xs, max_items: 3, template: "{{ item }}"}
        """,
    )
    doc = cli.json("run", path)
    assert doc["status"] == "failed"
    assert doc["steps"]["each"]["error"].startswith(
        f"{path}:6:25: steps[0].foreach: foreach gave 4 items, more than max_items (3)\n"
        "  hint: raise the step's max_items"
    )


def test_foreach_has_a_generous_default_limit(cli, write, tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({"xs": list(range(100_001))}))
    path = write(
        "p.yaml",
        """
        version: 1
        name: fan
        inputs:
          xs: {type: array}
        steps:
          - {id: each, foreach: inputs.xs, template: "{{ item }}"}
        """,
    )
    doc = cli.json("run", path, "--inputs-file", tmp_path / "in.json")
    assert (
        "foreach gave 100,001 items, more than max_items (100,000)"
        in (doc["steps"]["each"]["error"])
    )


@pytest.mark.parametrize(
    ("template", "kind"),
    [("{{ range(3) }}", "range"), ("{{ 'abc'.encode() }}", "bytes"), ("{{ inputs.get }}", None)],
)
def test_a_native_value_that_is_not_json_is_an_error(cli, write, template, kind):
    path = write(
        "p.yaml",
        f"""
        version: 1
        name: native
        inputs:
          get: {{type: string, default: x}}
        steps:
          - {{id: t, template: "{template}"}}
        """,
    )
    doc = cli.json("run", path)
    if kind is None:  # an input named like a dict method is the input
        assert doc["steps"]["t"]["output"] == "x"
        return
    assert (
        f"{path}:6:23: steps[0].template: template error: the value is a {kind}, "
        in (doc["steps"]["t"]["error"])
    )
    assert "0x" not in json.dumps(doc)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_in_structured_output_are_malformed_and_retried(cli, write, fake, number):
    fake.script(Reply.text(f'{{"x": {number}}}'), Reply.text('{"x": 1.5}'))
    path = write(
        "p.yaml",
        """
        version: 1
        name: numbers
        steps:
          - id: ask
            prompt: a number
            model: m
            retries: 1
            backoff: {initial: 0.01}
            output_schema: {type: object, properties: {x: {type: number}}, required: [x]}
        """,
    )
    result = cli("run", path, "--json")
    doc = json.loads(result.stdout)  # strict JSON: no NaN made it into the document
    assert doc["steps"]["ask"]["output"] == {"x": 1.5}
    assert doc["steps"]["ask"]["attempts"] == 2
    assert number not in result.stdout


RUNAWAY = """
version: 1
name: runaway
steps:
  - id: loop
    timeout: 1
    template: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
"""


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_runaway_template_stops_at_the_steps_timeout(cli, write, command):
    path = write("p.yaml", RUNAWAY)
    # without a render budget this would take hours; the test gives it 60 s
    result = cli.proc(command, path, "--json", timeout=60)
    doc = json.loads(result.stdout)
    step = doc["steps"]["loop"]
    message = step["error"] if command == "run" else step["detail"]
    assert "template error: rendering took longer than the step's timeout allows" in message
    assert (step["status"] if command == "run" else step["action"]) in ("failed", "error")
