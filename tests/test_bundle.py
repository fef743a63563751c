"""Replay bundles and `run --offline`: CI replays a pipeline without a key or the original cache."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import calls

PIPE = """
version: 1
name: bundled
inputs: {word: {type: string, default: abc}}
tools: {echo: {type: function, function: "tools:echo"}}
steps:
  - {id: a, tool: echo, with: {value: "{{ inputs.word }}"}}
  - {id: b, tool: echo, with: {value: "{{ steps.a.output }}-b"}}
  - {id: fan, foreach: "[1, 2]", tool: echo, with: {value: "{{ item }}"}}
  - {id: c, template: "{{ steps.b.output }} {{ steps.fan.output }}"}
outputs: {c: "{{ steps.c.output }}"}
"""


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Switch to an empty state folder (a new CI machine)."""

    def _fresh(name: str = "fresh") -> Path:
        home = tmp_path / name
        monkeypatch.setenv("STEPCHAIN_HOME", str(home))
        return home

    return _fresh


def exported(cli, write, target=None, out="b.jsonl"):
    path = write("p.yaml", PIPE)
    assert cli("run", path, "--run-id", "r1").exit_code == 0
    result = cli("bundle", "export", target or path, "-o", out)
    assert result.exit_code == 0, result.stderr
    return path


def test_export_import_then_offline_replay(cli, write, calls_log, fresh, tmp_path):
    path = exported(cli, write)
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["stepchain_bundle"] == 1 and header["pipeline"] == "bundled"
    assert header["entries"] == len(lines) - 1 == 5  # a, b, two fan items, c
    assert all(len(json.loads(line)["sha256"]) == 64 for line in lines[1:])
    before = calls(calls_log)

    fresh()
    refused = cli("run", path, "--offline", "--run-id", "no")
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[0] == (
        "error: --offline: 3 step(s) would need a call: a (a tool call), b (a tool call), "
        "fan (a tool call); nothing was run"
    )
    assert "no runs recorded yet" in cli("runs", "list").stdout

    imported = cli("bundle", "import", "b.jsonl", "--pipeline", path)
    assert imported.exit_code == 0 and "imported 5 entries of bundled" in imported.stderr
    run = cli.json("run", path, "--offline")
    assert run["status"] == "completed" and run["outputs"]["c"] == "abc-b [1, 2]"
    assert all(step["cached"] for step in run["steps"].values())
    assert calls(calls_log) == before  # no tool was called


def test_export_of_a_run_id_and_gzip(cli, write, calls_log, fresh, tmp_path):
    path = exported(cli, write, target="r1", out="b.jsonl.gz")
    with gzip.open(tmp_path / "b.jsonl.gz", "rt") as stream:
        assert json.loads(stream.readline())["entries"] == 5
    fresh()
    assert cli("bundle", "import", "b.jsonl.gz").exit_code == 0
    assert cli.json("run", path, "--offline")["status"] == "completed"


def test_export_names_what_is_not_cached(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    result = cli("bundle", "export", path, "-o", "b.jsonl")
    assert result.exit_code == 0
    assert "wrote 0 entries of bundled" in result.stderr
    assert "not in the cache (they will need calls): a, b, fan, c" in result.stderr


def test_offline_commands_and_llm_steps_are_named(cli, write, tmp_path):
    path = write(
        "p.yaml",
        """
        version: 1
        name: calls
        steps:
          - {id: ask, prompt: hi}
          - {id: shell, run: [echo, hi]}
        """,
    )
    result = cli("run", path, "--offline")  # no API key, commands not allowed: still this error
    assert result.exit_code == 2
    assert "ask (an LLM call), shell (a command)" in result.stderr
    clash = cli("run", path, "--offline", "--no-cache")
    assert clash.exit_code == 2 and "--no-cache and --refresh would need calls" in clash.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda lines: (
                [lines[0].replace('"stepchain_bundle": 1', '"stepchain_bundle": 2'), *lines[1:]]
            ),
            "b.jsonl:1: bundle format 2 is newer than this StepChain reads (1)",
        ),
        (lambda lines: lines[:-1], "b.jsonl:5: the header promises 5 entries, the bundle has 4"),
        (
            lambda lines: [*lines[:3], lines[3][:20]],
            "b.jsonl:4: not valid JSON (truncated or damaged)",
        ),
        (
            lambda lines: [*lines[:2], lines[2].replace('"abc-b"', '"evil"'), *lines[3:]],
            "does not match its sha256 (tampered or damaged)",
        ),
        (lambda lines: ["not json", *lines[1:]], "b.jsonl:1: not a stepchain bundle"),
    ],
)
def test_bad_bundles_import_nothing(cli, write, calls_log, fresh, tmp_path, damage, message):
    exported(cli, write)
    bundle = tmp_path / "b.jsonl"
    lines = bundle.read_text().splitlines()
    bundle.write_text("\n".join(damage(lines)) + "\n")
    fresh()
    result = cli("bundle", "import", bundle)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 2  # one line, and a hint
    assert message in result.stderr.splitlines()[0]
    assert "entries  0" in cli("cache", "info").stdout  # all or nothing


def test_cut_off_files_and_other_pipelines(cli, write, calls_log, fresh, tmp_path):
    path = exported(cli, write)
    gz = tmp_path / "b.jsonl.gz"
    assert cli("bundle", "export", path, "-o", gz).exit_code == 0
    bundle = tmp_path / "b.jsonl"
    text = bundle.read_text()
    bundle.write_text(text[:-10])  # cut in the middle of the last line
    fresh()
    result = cli("bundle", "import", bundle)
    assert "b.jsonl:6: the last line is cut off (truncated)" in result.stderr

    bundle.write_text(text)
    other = write("q.yaml", PIPE.replace("name: bundled", "name: other"))
    result = cli("bundle", "import", bundle, "--pipeline", other)
    assert result.exit_code == 1
    assert "b.jsonl:1: bundle is for pipeline bundled (sha256:" in result.stderr
    assert "entries  0" in cli("cache", "info").stdout

    gz.write_bytes(gz.read_bytes()[:-12])
    result = cli("bundle", "import", gz)
    assert result.exit_code == 1 and "the gzip stream is damaged or truncated" in result.stderr
    missing = cli("bundle", "import", tmp_path / "nope.jsonl")
    assert missing.exit_code == 1 and "nope.jsonl: cannot read the bundle" in missing.stderr
    nothing = cli("bundle", "export", "nope.yaml", "-o", "x.jsonl")
    assert nothing.exit_code == 1
    assert nothing.stderr.splitlines()[0] == "error: nope.yaml: no such pipeline file or run id"
    assert not (tmp_path / "x.jsonl").exists()
    unwritable = cli("bundle", "export", path, "-o", tmp_path / "no-such-dir" / "b.jsonl")
    assert unwritable.exit_code == 1 and "cannot write the bundle" in unwritable.stderr
