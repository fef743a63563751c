"""Secrets are opaque: handed only to programs (env, headers), masked in every message."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

SECRET = 's3cr3t&T0KEN"value'


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv("DB_TOKEN", SECRET)
    return SECRET


@pytest.mark.parametrize(
    ("step", "line"),
    [
        ('{id: a, prompt: "Use {{ secrets.DB_TOKEN }}"}', 5),
        ('{id: a, template: "{{ secrets.DB_TOKEN | reverse }}"}', 5),
        ('{id: a, tool: t, with: {x: "{{ secrets.DB_TOKEN }}"}}', 5),
        ('{id: a, run: [echo, "{{ secrets.DB_TOKEN }}"]}', 5),
        ('{id: a, run: "echo {{ secrets.DB_TOKEN[:3] }}"}', 5),
        ("{id: a, template: x, when: \"secrets.DB_TOKEN == 'x'\"}", 5),
    ],
)
def test_a_secret_anywhere_but_env_or_headers_is_refused_with_a_position(cli, write, step, line):
    write("tools.py", "def t(x):\n    return x\n")
    path = write(
        "p.yaml",
        f"version: 1\nname: s\nsecrets: [DB_TOKEN]\ntools: {{t: {{type: function, function: 'tools:t'}}}}\n"
        f"steps:\n- {step}\n",
    )
    result = cli("validate", path)
    assert result.exit_code == 1
    assert f"{path}:{line + 1}:" in result.stdout
    assert (
        "secrets.DB_TOKEN can only be handed to a program: use it in a run step's env:, "
        "an MCP server's env: or a tool's headers:"
    ) in result.stdout


def test_a_secret_in_outputs_is_refused(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: s
        secrets: [DB_TOKEN]
        steps: [{id: a, template: x}]
        outputs: {leak: "{{ secrets.DB_TOKEN }}"}
        """,
    )
    result = cli("validate", path)
    assert result.exit_code == 1
    assert f"{path}:5:21: outputs.leak: secrets.DB_TOKEN can only be handed" in result.stdout


def test_a_run_steps_env_hands_the_secret_to_the_command_only(cli, write, isolated_home):
    path = write(
        "p.yaml",
        """
        version: 1
        name: s
        secrets: [DB_TOKEN]
        steps:
          - id: use
            run: ["sh", "-c", "test \\"$T\\" = \\"$EXPECTED\\" && echo ok; echo got=$T"]
            env: {T: "{{ secrets.DB_TOKEN }}", EXPECTED: "{{ secrets.DB_TOKEN }}"}
        """,
    )
    result = cli("run", path, "--allow-run", "--json", "--run-id", "s")
    doc = json.loads(result.stdout)
    assert doc["steps"]["use"]["output"] == "ok\ngot=***\n"
    for file in isolated_home.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


def test_env_only_applies_to_run_steps(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: s
        steps: [{id: a, template: x, env: {A: b}}]
        """,
    )
    result = cli("validate", path)
    assert "'env' only applies to run steps, and this is a template step: remove it" in (
        result.stdout
    )


TRANSFORMS = {
    "reversed": SECRET[::-1],
    "upper": SECRET.upper(),
    "lower": SECRET.lower(),
    "json": json.dumps(SECRET)[1:-1],
    "url": quote(SECRET, safe=""),
    "base64": base64.b64encode(SECRET.encode()).decode().rstrip("="),
    "html": SECRET.replace("&", "&amp;").replace('"', "&quot;"),
}


@pytest.mark.parametrize("form", sorted(TRANSFORMS))
def test_a_transformed_secret_in_a_commands_stderr_is_masked(cli, write, tmp_path, form):
    (tmp_path / "leaked.txt").write_text(TRANSFORMS[form])
    path = write(
        "p.yaml",
        """
        version: 1
        name: s
        secrets: [DB_TOKEN]
        steps:
          - id: leak
            run: ["sh", "-c", "cat leaked.txt >&2; cat leaked.txt; exit 1"]
            env: {T: "{{ secrets.DB_TOKEN }}"}
            retries: 0
        """,
    )
    result = cli("run", path, "--allow-run", "--json")
    doc = json.loads(result.stdout)
    assert doc["steps"]["leak"]["error"] == "command exited with status 1: ***"
    assert TRANSFORMS[form] not in result.stdout + result.stderr


@pytest.mark.parametrize("value", ["1", "ab", "xyz"])
def test_a_secret_too_short_to_mask_is_refused(cli, write, monkeypatch, value):
    monkeypatch.setenv("DB_TOKEN", value)
    path = write(
        "p.yaml",
        """
        version: 1
        name: s
        secrets: [DB_TOKEN]
        steps: [{id: a, template: "order 1001"}]
        """,
    )
    result = cli("run", path)
    assert result.exit_code == 1
    assert "error: secret(s) DB_TOKEN shorter than 4 characters: too short to mask safely" in (
        result.stderr
    )
    assert "no runs recorded yet" in cli("runs", "list").stdout


def test_plan_masks_a_secret_in_a_template_error(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: s
        secrets: [DB_TOKEN]
        steps:
          - id: a
            run: [env]
            env: {T: "{{ {}[secrets.DB_TOKEN] }}"}
        """,
    )
    planned = cli("plan", path)
    assert "template error" in planned.stdout and "***" in planned.stdout
    assert SECRET not in planned.stdout + planned.stderr
    ran = cli("run", path, "--allow-run", "--json")
    assert SECRET not in ran.stdout + ran.stderr
    assert "***" in json.loads(ran.stdout)["steps"]["a"]["error"]
