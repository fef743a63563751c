"""The `stepchain` logger: every step's start and finish at INFO, failures at ERROR, with fields."""

from __future__ import annotations

import json
import logging

from stepchain import Executor

PIPELINE = """
version: 1
name: logged
tools:
  echo: {type: function, function: "tools:echo"}
  boom: {type: function, function: "tools:boom"}
steps:
  - {id: ok, tool: echo, with: {value: fine}}
  - {id: bad, tool: boom, with: {message: disk on fire}}
"""


def pipeline(write, calls_log):
    return write("p.yaml", PIPELINE)


def test_json_logs_on_the_cli_carry_each_steps_fields(cli, write, calls_log):
    path = pipeline(write, calls_log)
    result = cli("--log-level", "INFO", "--log-format", "json", "run", path, "--run-id", "r1")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    by_message = {r["message"]: r for r in records}
    assert by_message["step ok started (tool)"] == {
        **by_message["step ok started (tool)"],
        "level": "INFO",
        "logger": "stepchain",
        "run_id": "r1",
        "step_id": "ok",
        "kind": "tool",
        "attempt": 1,
    }
    done = next(r for r in records if r["message"].startswith("step ok completed in "))
    assert done["cached"] is False and done["tokens"] == 0 and done["duration"] >= 0
    failed = by_message["step bad failed: tool 'boom' raised ValueError: disk on fire"]
    assert failed["level"] == "ERROR" and failed["step_id"] == "bad" and failed["attempt"] == 1
    assert by_message["run r1 failed: step(s) bad failed"]["level"] == "ERROR"

    again = cli("--log-level", "info", "run", path, "--run-id", "r2")
    assert "stepchain INFO step ok completed from cache in " in again.stderr
    assert "stepchain ERROR run r2 failed: step(s) bad failed" in again.stderr


def test_without_log_flags_the_cli_logs_no_step_lifecycle(cli, write, calls_log):
    result = cli("run", pipeline(write, calls_log), "--run-id", "r1")
    assert "started (tool)" not in result.stderr
    assert logging.getLogger("stepchain").handlers == []  # the flags' handler went with them


def test_python_api_records_have_the_fields_as_attributes(write, calls_log, caplog):
    path = pipeline(write, calls_log)
    with caplog.at_level(logging.INFO, logger="stepchain"):
        result = Executor().run(path, run_id="api")
    assert result.status == "failed"
    finished = {
        r.step_id: r for r in caplog.records if hasattr(r, "step_id") and hasattr(r, "status")
    }
    assert finished["ok"].levelno == logging.INFO
    assert finished["ok"].run_id == "api" and finished["ok"].kind == "tool"
    assert finished["bad"].levelno == logging.ERROR
    assert {"attempt", "duration", "cached", "tokens"} <= vars(finished["bad"]).keys()
    run = [r for r in caplog.records if r.getMessage() == "run api failed: step(s) bad failed"]
    assert run and run[0].levelno == logging.ERROR


def test_a_bad_log_level_is_refused(cli):
    result = cli("--log-level", "LOUD", "validate", "x.yaml")
    assert result.exit_code == 2
    assert "'LOUD' is not one of" in result.stderr


def test_without_a_terminal_the_table_ends_its_line_and_has_no_padding(cli, write, calls_log):
    path = write(
        "ok.yaml",
        """
        version: 1
        name: ok
        tools:
          echo: {type: function, function: "tools:echo"}
        steps:
          - {id: a, tool: echo, with: {value: x}}
        """,
    )
    result = cli("run", path, "--run-id", "plain")
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert lines[0] == "stepchain · ok"
    assert lines[-1] == "run plain completed"
    assert lines[-2].startswith("└") and lines[-2].endswith("┘")
    assert all(line == line.rstrip() for line in lines)
