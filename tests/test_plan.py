"""`stepchain plan` knows, before running, what will replay from the cache and what must run."""

from __future__ import annotations

import json

PIPE = """
version: 1
name: planned
inputs: {word: {type: string, default: abc}, loud: {type: boolean, default: false}}
tools: {echo: {type: function, function: "tools:echo"}}
steps:
  - {id: a, tool: echo, with: {value: "{{ inputs.word }}"}}
  - {id: b, tool: echo, with: {value: "{{ steps.a.output }}-b"}}
  - {id: shout, when: inputs.loud, template: "{{ steps.b.output | upper }}"}
  - {id: fan, foreach: "[1, 2]", tool: echo, with: {value: "{{ item }}"}}
  - {id: c, template: "{{ steps.b.output }} {{ steps.fan.output }}"}
"""


def plan(cli, *args):
    result = cli("plan", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return {k: v["action"] for k, v in json.loads(result.stdout)["steps"].items()}


def test_cold_plan_runs_roots_and_marks_downstream_unknown(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    assert plan(cli, path) == {
        "a": "run",
        "b": "unknown",
        "shout": "skip",
        "fan": "run",
        "c": "unknown",
    }
    assert not calls_log.exists()  # planning calls no tool


def test_plan_after_a_run_replays_everything(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    cli("run", path)
    assert plan(cli, path) == {
        "a": "replay",
        "b": "replay",
        "shout": "skip",
        "fan": "replay",
        "c": "replay",
    }
    text = cli("plan", path).stdout
    assert "layer 0: a, fan\nlayer 1: b\nlayer 2: c, shout\n" in text
    assert "critical path: a -> b -> " in text  # three steps long (c and shout tie)


def test_plan_is_exact_about_what_a_changed_input_reruns(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    cli("run", path)
    changed = plan(cli, path, "-i", "word=xyz")
    assert changed == {"a": "run", "b": "unknown", "shout": "skip", "fan": "replay", "c": "unknown"}
    assert plan(cli, path, "-i", "loud=true")["shout"] == "run"
