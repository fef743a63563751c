"""Running pipelines: scheduling, foreach, when, failures, retries, timeouts, output."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import calls
from stepchain import Executor

TOOLS = """
tools:
  echo: {type: function, function: "tools:echo"}
  nap: {type: function, function: "tools:nap"}
  anap: {type: function, function: "tools:anap"}
  boom: {type: function, function: "tools:boom"}
  flaky: {type: function, function: "tools:flaky"}
  add: {type: function, function: "tools:add"}
"""


def pipeline(write, body: str, name: str = "p.yaml"):
    return write(name, "version: 1\nname: t\n" + TOOLS + textwrap.dedent(body))


def test_main_job_runs_and_second_run_replays_everything(cli, isolated_home):
    first = cli.json(
        "run", "pipelines/sales-report.yaml".replace("pipelines", str(_repo() / "pipelines"))
    )
    assert first["status"] == "completed"
    assert "Total revenue" in first["outputs"]["report"]
    assert first["steps"]["chart"]["status"] == "completed"
    assert len(first["steps"]["outlooks"]["output"]) == 7
    second = cli.json("run", str(_repo() / "pipelines" / "sales-report.yaml"))
    assert second["outputs"] == first["outputs"]
    assert all(s["cached"] for s in second["steps"].values())
    assert all(s["attempts"] == 0 for s in second["steps"].values())


def test_step_starts_when_its_own_dependencies_finish_not_layer_by_layer(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: quick, tool: anap, with: {name: quick, seconds: 0.05}}
          - {id: slow, tool: anap, with: {name: slow, seconds: 0.6}}
          - {id: after_quick, tool: anap, with: {name: "after-{{ steps.quick.output }}", seconds: 0.05}}
          - {id: join, template: "{{ steps.slow.output }} {{ steps.after_quick.output }}"}
        """,
    )
    result = Executor().run(path)
    assert result.status == "completed"
    log = calls(calls_log)
    assert log.index("end after-quick") < log.index("end slow")
    assert result.steps["after_quick"].completed_at < result.steps["slow"].completed_at
    assert result.steps["join"].output == "slow after-quick"


def test_max_concurrent_bounds_steps_and_foreach_items(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - id: fan
            foreach: "range(6) | list"
            tool: anap
            with: {name: "n{{ item }}", seconds: 0.1}
          - {id: other, tool: anap, with: {name: other, seconds: 0.1}}
        """,
    )
    Executor(max_concurrent=2).run(path)
    running = peak = 0
    for line in calls(calls_log):
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert peak == 2


def test_foreach_keeps_outputs_in_item_order(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - id: fan
            foreach: "[0.3, 0.01, 0.15]"
            tool: anap
            with: {name: "item{{ index }}", seconds: "{{ item }}"}
        """,
    )
    result = Executor().run(path)
    assert result.steps["fan"].output == ["item0", "item1", "item2"]
    assert calls(calls_log)[-1] == "end item0"


def test_when_false_skips_the_step_and_dependents_still_run(write, calls_log):
    path = pipeline(
        write,
        """
        inputs: {n: {type: integer, default: 1}}
        steps:
          - {id: big, when: inputs.n > 5, tool: echo, with: {value: big}}
          - {id: after, template: "big was {{ steps.big.status }}, output {{ steps.big.output }}"}
        """,
    )
    result = Executor().run(path)
    assert result.status == "completed"
    assert result.steps["big"].status == "skipped"
    assert result.steps["big"].reason == "when: inputs.n > 5 is false"
    assert result.steps["after"].output == "big was skipped, output None"
    assert calls(calls_log) == []


def test_failure_skips_only_dependents_and_run_fails(cli, write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: bad, tool: boom, with: {message: disk on fire}}
          - {id: child, tool: echo, with: {value: "{{ steps.bad.output }}"}}
          - {id: grandchild, template: "{{ steps.child.output }}"}
          - {id: independent, tool: echo, with: {value: fine}}
        """,
    )
    result = cli("run", path, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["status"] == "failed"
    assert doc["steps"]["bad"]["status"] == "failed"
    assert doc["steps"]["bad"]["error"] == "tool 'boom' raised ValueError: disk on fire"
    assert doc["steps"]["bad"]["attempts"] == 1  # a ValueError is not worth retrying
    assert doc["steps"]["child"] == {
        **doc["steps"]["child"],
        "status": "skipped",
        "reason": "steps.bad failed",
    }
    assert doc["steps"]["grandchild"]["status"] == "skipped"
    assert doc["steps"]["independent"]["output"] == "fine"
    assert "step bad failed: tool 'boom' raised ValueError: disk on fire" in result.stderr
    assert "stepchain resume" in result.stderr


def test_continue_on_error_lets_dependents_run_with_null_output(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: bad, tool: boom, continue_on_error: true}
          - {id: child, template: "got {{ steps.bad.output }} ({{ steps.bad.status }})"}
        """,
    )
    result = Executor().run(path)
    assert result.steps["bad"].status == "failed"
    assert result.steps["child"].output == "got None (failed)"
    assert result.status == "completed"


def test_fail_fast_starts_nothing_new_after_a_failure(cli, write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: bad, tool: boom}
          - {id: slow, tool: anap, with: {name: slow, seconds: 0.3}}
          - {id: later, tool: echo, with: {value: "{{ steps.slow.output }}"}}
        """,
    )
    doc = json.loads(cli("run", path, "--json", "--fail-fast").stdout)
    assert doc["steps"]["slow"]["status"] == "completed"  # already in flight: finishes
    assert doc["steps"]["later"]["status"] == "skipped"
    assert doc["steps"]["later"]["reason"] == "not started: --fail-fast after steps.bad failed"
    assert "echo slow" not in calls(calls_log)


def test_retryable_errors_are_retried_with_backoff(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: shaky, tool: flaky, with: {name: s, failures: 2}, retries: 2, backoff: {initial: 0.01}}
        """,
    )
    result = Executor().run(path)
    assert result.steps["shaky"].status == "completed"
    assert result.steps["shaky"].attempts == 3
    assert result.steps["shaky"].output == "s ok"


def test_retries_exhausted_reports_attempts_and_last_error(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: shaky, tool: flaky, with: {name: s, failures: 5}, retries: 1, backoff: {initial: 0.01}}
        """,
    )
    result = Executor().run(path)
    step = result.steps["shaky"]
    assert (step.status, step.attempts) == ("failed", 2)
    assert (
        step.error
        == "tool 'flaky' raised ConnectionError: connection reset (call 2) (after 2 attempts)"
    )


def test_timeout_fails_the_step_with_the_limit_in_the_message(write, calls_log):
    path = pipeline(
        write,
        """
        steps:
          - {id: sleepy, tool: anap, with: {name: z, seconds: 5}, timeout: 0.2, retries: 0}
        """,
    )
    result = Executor().run(path)
    assert result.steps["sleepy"].status == "failed"
    assert result.steps["sleepy"].error == "timed out after 0.2s"


def test_template_error_at_render_time_names_step_and_position(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        steps:
          - id: data
            template: "{{ {'a': 1} }}"
          - id: use
            template: |
              value: {{ steps.data.output.missing.deeper }}
        """,
    )
    doc = json.loads(cli("run", path, "--json").stdout)
    error = doc["steps"]["use"]["error"]
    assert error.startswith(f"{path}:7:15: steps[1].template: template error: ")
    assert "'dict object' has no attribute 'missing'" in error
    assert doc["steps"]["use"]["attempts"] == 0


def test_tool_returning_non_json_fails_clearly(write, calls_log):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        tools: {odd: {type: function, function: "tools:not_json"}}
        steps: [{id: odd, tool: odd}]
        """,
    )
    result = Executor().run(path)
    assert result.steps["odd"].error.startswith(
        "tool 'odd' returned a object, which is not JSON-serialisable"
    )


def test_tool_called_with_wrong_arguments_fails_before_running(write, calls_log):
    path = pipeline(write, "steps: [{id: s, tool: add, with: {a: 1, c: 2}}]\n")
    result = Executor().run(path)
    assert "tool 'add' called with wrong arguments" in result.steps["s"].error
    assert calls(calls_log) == []


def test_json_output_has_the_documented_shape(cli, write, calls_log):
    path = pipeline(
        write,
        "steps: [{id: a, tool: echo, with: {value: [1, 2]}}]\noutputs: {x: '{{ steps.a.output }}'}\n",
    )
    doc = cli.json("run", path, "--run-id", "shape-1")
    assert set(doc) == {"run_id", "status", "outputs", "steps", "usage"}
    assert doc["run_id"] == "shape-1"
    assert doc["outputs"] == {"x": [1, 2]}
    assert set(doc["steps"]["a"]) == {
        "status",
        "cached",
        "attempts",
        "output",
        "error",
        "started_at",
        "finished_at",
        "duration_s",
        "usage",
    }


def test_inputs_from_flags_and_file_are_validated(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        inputs:
          quarter: {type: string}
          top_n: {type: integer, default: 3, minimum: 1}
        steps: [{id: a, template: "{{ inputs.quarter }}/{{ inputs.top_n }}"}]
        outputs: {a: "{{ steps.a.output }}"}
        """,
    )
    missing = cli("run", path)
    assert missing.exit_code == 2
    assert "error: input 'quarter' is required" in missing.stderr
    assert "hint: pass it with -i quarter=VALUE" in missing.stderr
    bad = cli("run", path, "-i", "quarter=Q1", "-i", "top_n=0")
    assert bad.exit_code == 2 and "input 'top_n': 0 is less than the minimum of 1" in bad.stderr
    unknown = cli("run", path, "-i", "quartr=Q1")
    assert (
        unknown.exit_code == 2
        and "unknown input 'quartr' (did you mean 'quarter'?)" in unknown.stderr
    )
    write("in.yaml", "quarter: Q2 2024\ntop_n: 7\n")
    ok = cli.json("run", path, "--inputs-file", "in.yaml", "-i", "top_n=9")
    assert ok["outputs"]["a"] == "Q2 2024/9"


def test_invalid_pipeline_runs_nothing_and_prints_positions(cli, write):
    path = write(
        "p.yaml", "version: 1\nname: t\nsteps:\n  - id: a\n    retries: -1\n    template: x\n"
    )
    result = cli("run", path)
    assert result.exit_code == 1
    assert f"{path}:5:14: steps[0].retries: -1 is less than the minimum of 0" in result.stderr
    assert "nothing was run" in result.stderr


def test_existing_run_id_without_resume_is_refused(cli, write):
    path = write("p.yaml", "version: 1\nname: t\nsteps: [{id: a, template: x}]\n")
    assert cli("run", path, "--run-id", "r1").exit_code == 0
    again = cli("run", path, "--run-id", "r1")
    assert again.exit_code == 1
    assert "error: run 'r1' already exists" in again.stderr
    assert "stepchain resume r1" in again.stderr


def test_undeclared_environment_fails_before_running(cli, write, monkeypatch):
    monkeypatch.delenv("REGION", raising=False)
    path = write(
        "p.yaml",
        "version: 1\nname: t\nenv: [REGION]\nsteps: [{id: a, template: '{{ env.REGION }}'}]\n",
    )
    result = cli("run", path)
    assert result.exit_code == 1
    assert "environment variable(s) not set: REGION" in result.stderr
    monkeypatch.setenv("REGION", "eu")
    assert cli.json("run", path)["steps"]["a"]["output"] == "eu"


def _repo():
    from conftest import REPO

    return REPO


def test_two_pipelines_with_same_named_tool_modules_in_one_process(write):
    for folder, word in (("one", "first"), ("two", "second")):
        write(f"{folder}/helpers.py", f"def say():\n    return '{word}'\n")
        write(
            f"{folder}/p.yaml",
            "version: 1\nname: t\ntools: {say: {type: function, function: 'helpers:say'}}\n"
            "steps: [{id: s, tool: say}]\n",
        )
    outputs = [Executor().run(f"{folder}/p.yaml").steps["s"].output for folder in ("one", "two")]
    assert outputs == ["first", "second"]


def test_unusable_state_folder_is_a_clear_error(cli, write, monkeypatch):
    path = write("p.yaml", "version: 1\nname: t\nsteps: [{id: a, template: x}]\n")
    write("home", "a file where the state folder should be")
    monkeypatch.setenv("STEPCHAIN_HOME", str(path.parent / "home"))
    result = cli("run", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot use {path.parent / 'home'} as the state folder")


def test_inputs_and_steps_named_like_dict_methods_are_what_they_name(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        inputs: {items: {type: array, default: [a, b]}, keys: {type: string, default: k}}
        steps:
          - {id: values, foreach: inputs.items, template: "{{ item }}-{{ inputs.keys }}"}
          - {id: get, template: "{{ steps.values.output | join(',') }}"}
          - {id: last, template: "{{ steps.get.output }}"}
        """,
    )
    assert cli("validate", path).exit_code == 0
    plan = json.loads(cli("plan", path, "--json").stdout)["steps"]
    assert {k: v["action"] for k, v in plan.items()} == {
        "values": "run",
        "get": "run",
        "last": "run",
    }
    doc = cli.json("run", path)
    assert doc["steps"]["values"]["output"] == ["a-k", "b-k"]
    assert doc["steps"]["last"]["output"] == "a-k,b-k"


# -- template steps inline vs as tasks -----------------------------------------------------
MIXED_TEMPLATES = """
inputs: {n: {type: integer, default: 3}}
steps:
  - {id: a, template: "a{{ inputs.n }}"}
  - {id: same1, template: "same"}
  - {id: same2, needs: [a, same1], template: "same"}
  - {id: fan, foreach: "range(inputs.n) | list", template: "{{ steps.a.output }}-{{ item }}"}
  - {id: empty, foreach: "[]", template: "never"}
  - {id: gated, when: "inputs.n > 5", template: "gated"}
  - {id: after_gated, template: "{{ steps.gated.status }}"}
  - {id: data, template: "{{ {'k': 1} }}"}
  - {id: bad, template: "{{ steps.data.output.missing.deeper }}"}
  - {id: after_bad, template: "{{ steps.bad.output }}"}
  - {id: tolerant, continue_on_error: true, template: "{{ 1 // 0 }}"}
  - {id: after_tolerant, template: "{{ steps.tolerant.output }}"}
  - {id: slow, tool: nap, with: {name: slow, seconds: 0.05}}
  - {id: joined, template: "{{ steps.fan.output | join(',') }}/{{ steps.slow.output }}"}
  - {id: uncached, cache: false, template: "{{ steps.joined.output }}"}
"""


def _run_both_ways(write, monkeypatch, tmp_path, max_concurrent=8, **options):
    """The same pipeline and options with template steps inline and as tasks, fresh homes."""
    from stepchain.run.scheduler import Scheduler

    path = pipeline(write, MIXED_TEMPLATES)
    runs = {}
    for inline in (True, False):
        monkeypatch.setattr(Scheduler, "inline_templates", inline)
        monkeypatch.setenv("STEPCHAIN_HOME", str(tmp_path / f"home-{inline}"))
        first = Executor(max_concurrent).run(path, run_id="r1", **options)
        second = Executor(max_concurrent).run(path, run_id="r2", **options)
        runs[inline] = (first, second)
    return runs


def _comparable(result):
    steps = {
        sid: (r.status, r.output, r.error, r.cached, r.attempts, r.cache_key, r.reason)
        for sid, r in result.steps.items()
    }
    return result.status, result.outputs, steps


def test_inline_template_steps_give_what_template_tasks_give(
    write, calls_log, monkeypatch, tmp_path
):
    runs = _run_both_ways(write, monkeypatch, tmp_path)
    for inline_run, task_run in zip(runs[True], runs[False], strict=True):
        assert _comparable(inline_run) == _comparable(task_run)
    first, second = runs[True]
    assert first.steps["fan"].output == ["a3-0", "a3-1", "a3-2"]
    assert first.steps["after_bad"].status == "skipped"
    assert first.steps["after_tolerant"].status == "completed"
    assert first.steps["uncached"].attempts == 1 and not second.steps["uncached"].cached
    assert {s.cached for sid, s in second.steps.items() if s.status == "completed"} - {
        second.steps["uncached"].cached
    } == {True}


def test_inline_template_steps_with_one_slot_and_fail_fast(write, calls_log, monkeypatch, tmp_path):
    runs = _run_both_ways(write, monkeypatch, tmp_path, max_concurrent=1, fail_fast=True)
    for inline_run, task_run in zip(runs[True], runs[False], strict=True):
        assert _comparable(inline_run) == _comparable(task_run)


def test_inline_template_records_match_task_records(write, calls_log, monkeypatch, tmp_path):
    from stepchain import Storage

    _run_both_ways(write, monkeypatch, tmp_path)
    recorded = {}
    for inline in (True, False):
        state = Storage(tmp_path / f"home-{inline}").load_run_state("r1")
        recorded[inline] = [
            {
                k: [t["status"] for t in v] if k == "tries" else v
                for k, v in r.to_dict().items()
                if k not in ("started_at", "finished_at", "duration_s")
            }
            for r in state.results
        ]
    assert recorded[True] == recorded[False]


def test_every_public_name_is_exported_and_importable():
    import stepchain

    assert set(stepchain.__all__) - {"__version__"} == set(stepchain._PUBLIC)
    for name in stepchain.__all__:
        assert getattr(stepchain, name) is not None


def test_max_concurrent_below_one_is_refused():
    from stepchain import UsageError

    for bad in (0, -3):
        with pytest.raises(UsageError, match="max_concurrent must be at least 1"):
            Executor(max_concurrent=bad)


def test_a_run_result_has_a_short_repr(write):
    steps = "\n".join(f"  - {{id: s{i}, template: 'x{i}'}}" for i in range(50))
    path = write("many.yaml", f"version: 1\nname: many\nsteps:\n{steps}\n")
    result = Executor().run(path, run_id="short")
    assert repr(result) == "RunResult(run_id='short', status='completed', steps={'completed': 50})"
