"""The cache, run records, resume, kill -9, SIGINT, locking and secrets, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import diskcache
import pytest
from conftest import calls
from stepchain import Executor, Storage, execute, load_pipeline, setup_stepchain
from stepchain.cache import canonical_json

CHAIN = """
version: 1
name: chain
defaults: {cache: false}
tools:
  nap: {type: function, function: "tools:nap"}
steps:
  - {id: s1, tool: nap, with: {name: s1, seconds: 0.4}}
  - {id: s2, tool: nap, with: {name: "s2-{{ steps.s1.output }}", seconds: 0.4}}
  - {id: s3, tool: nap, with: {name: "s3-{{ steps.s2.output }}", seconds: 0.4}}
  - {id: s4, tool: nap, with: {name: "s4-{{ steps.s3.output }}", seconds: 0.4}}
"""

WORDS = """
version: 1
name: words
inputs: {word: {type: string, default: abc}}
tools: {echo: {type: function, function: "tools:echo"}}
steps:
  - {id: a, tool: echo, with: {value: "{{ inputs.word }}"}}
  - {id: b, tool: echo, with: {value: "{{ steps.a.output | length }}"}}
  - {id: c, tool: echo, with: {value: "{{ steps.b.output }}!"}}
  - {id: d, tool: echo, with: {value: constant}}
"""


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# -- cache --------------------------------------------------------------------------------
def test_second_identical_run_makes_no_tool_calls(cli, write, calls_log):
    path = write("p.yaml", WORDS)
    cli.json("run", path)
    before = len(calls(calls_log))
    doc = cli.json("run", path)
    assert len(calls(calls_log)) == before == 4
    assert {s["cached"] for s in doc["steps"].values()} == {True}


def test_changed_upstream_output_reruns_exactly_the_changed_requests(cli, write, calls_log):
    path = write("p.yaml", WORDS)
    cli.json("run", path, "-i", "word=abc")
    calls_log.unlink()
    doc = cli.json("run", path, "-i", "word=xyz")  # same length: b's rendered request is unchanged
    assert calls(calls_log) == ["echo xyz"]
    assert {k: v["cached"] for k, v in doc["steps"].items()} == {
        "a": False,
        "b": True,
        "c": True,
        "d": True,
    }
    calls_log.unlink()
    doc = cli.json("run", path, "-i", "word=longer")  # a's new output changes b's and c's requests
    assert calls(calls_log) == ["echo longer", "echo 6", "echo 6!"]
    assert {k: v["cached"] for k, v in doc["steps"].items()} == {
        "a": False,
        "b": False,
        "c": False,
        "d": True,
    }


def test_no_cache_ignores_hits_and_refresh_recomputes_one_step(cli, write, calls_log):
    path = write("p.yaml", WORDS)
    cli.json("run", path)
    calls_log.unlink()
    cli.json("run", path, "--refresh", "b")
    assert calls(calls_log) == ["echo 3"]
    calls_log.unlink()
    cli.json("run", path, "--no-cache")
    assert len(calls(calls_log)) == 4
    bad = cli("run", path, "--refresh", "nope")
    assert bad.exit_code == 2 and "--refresh nope: no such step in words" in bad.stderr


def test_cache_ttl_expires(cli, write, calls_log):
    path = write("p.yaml", WORDS.replace("{id: d, tool: echo", '{id: d, cache: "1s", tool: echo'))
    cli.json("run", path)
    time.sleep(1.2)
    calls_log.unlink()
    doc = cli.json("run", path)
    assert calls(calls_log) == ["echo constant"]
    assert doc["steps"]["d"]["cached"] is False


def test_errors_are_never_cached(cli, write, calls_log):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        tools: {flaky: {type: function, function: "tools:flaky"}}
        steps: [{id: f, tool: flaky, with: {name: f, failures: 1}, retries: 0}]
        """,
    )
    assert cli("run", path).exit_code == 1
    doc = cli.json("run", path)
    assert doc["steps"]["f"] == {
        **doc["steps"]["f"],
        "status": "completed",
        "cached": False,
        "output": "f ok",
    }


def test_cache_is_private_json_not_pickle(cli, write, calls_log, isolated_home):
    cli.json("run", write("p.yaml", WORDS))
    folder = isolated_home / "cache"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(isolated_home.stat().st_mode) == 0o700
    with diskcache.Cache(str(folder)) as store:  # a plain diskcache, read through its public API
        values = [store.get(k) for k in store]
    # text: a pickled value would read back as a dict
    assert all(isinstance(v, str) for v in values)
    entries = [json.loads(v) for v in values]
    assert [canonical_json(e) for e in entries] == values
    outputs = sorted(json.dumps(e["output"]) for e in entries)
    assert outputs == ['"3!"', '"abc"', '"constant"', "3"]  # a lone {{ expr }} keeps its type


def test_corrupted_cache_degrades_to_rerunning(cli, write, calls_log, isolated_home):
    path = write("p.yaml", WORDS)
    first = cli.json("run", path)
    (isolated_home / "cache" / "cache.db").write_bytes(b"this is not sqlite" * 100)
    calls_log.unlink()
    again = cli.json("run", path)
    assert again["outputs"] == first["outputs"]
    assert again["status"] == "completed"
    assert len(calls(calls_log)) == 4
    assert list(isolated_home.glob("cache.damaged-*"))


def test_deleted_cache_degrades_to_rerunning(cli, write, calls_log, isolated_home):
    path = write("p.yaml", WORDS)
    cli.json("run", path)
    cli("cache", "clear")
    calls_log.unlink()
    doc = cli.json("run", path)
    assert len(calls(calls_log)) == 4 and doc["status"] == "completed"


def test_cache_info_and_clear(cli, write, calls_log):
    cli.json("run", write("p.yaml", WORDS))
    info = json.loads(cli("cache", "info", "--json").stdout)
    assert info["entries"] == 4
    assert cli("cache", "clear").stdout.strip() == "removed 4 cache entries"
    assert json.loads(cli("cache", "info", "--json").stdout)["entries"] == 0


# -- run records --------------------------------------------------------------------------
def test_run_record_has_pipeline_inputs_and_every_step(cli, write, calls_log):
    path = write("p.yaml", WORDS)
    cli.json("run", path, "--run-id", "rec-1", "-i", "word=hello")
    state = json.loads(cli("runs", "show", "rec-1", "--json").stdout)
    assert state["status"] == "completed"
    assert state["inputs"] == {"word": "hello"}
    assert state["pipeline"]["path"] == str(path)
    assert len(state["pipeline"]["hash"]) == 64
    assert state["steps"]["b"]["output"] == 5
    assert state["steps"]["b"]["attempts"] == 1
    assert len(state["steps"]["b"]["cache_key"]) == 64
    assert state["steps"]["b"]["duration_s"] >= 0
    listing = cli("runs", "list").stdout
    assert "rec-1" in listing and "completed" in listing and "4/4" in listing
    text = cli("runs", "show", "rec-1").stdout
    assert "run       rec-1" in text and "b " in text
    missing = cli("runs", "show", "nope")
    assert missing.exit_code == 1 and "no run with id 'nope'" in missing.stderr


def test_python_api_execute_resume_and_load_run_state(write, calls_log, tmp_path):
    settings = setup_stepchain(storage_path=tmp_path / "state", log_level="INFO")
    assert settings.home == tmp_path / "state"
    path = write(
        "p.yaml",
        WORDS.replace(
            "{id: c, tool: echo", "{id: c, tool: echo, retries: 0, continue_on_error: false"
        ),
    )
    pipe = load_pipeline(path)
    results = execute(pipe, run_id="api-1", inputs={"word": "hi"})
    assert [r.step_id for r in results] == ["a", "b", "c", "d"]
    assert [r.status for r in results] == ["completed"] * 4
    assert results[2].output == "2!"
    assert results[0].started_at <= results[0].completed_at
    state = Storage().load_run_state("api-1")
    assert (tmp_path / "state" / "runs.db").exists()
    assert [s.id for s in state.plan.steps] == ["a", "b", "c", "d"]
    assert [r.output for r in state.results] == ["hi", 2, "2!", "constant"]
    calls_log.unlink()
    again = Executor(max_concurrent=1).execute(pipe, run_id="api-1", resume=True)
    assert calls(calls_log) == []
    assert all(r.cached for r in again)


# -- resume -------------------------------------------------------------------------------
def test_kill_9_then_resume_executes_each_completed_step_exactly_once(cli, write, calls_log):
    path = write("chain.yaml", CHAIN)
    proc = cli.spawn("run", path, "--run-id", "k9")
    wait_for(lambda: "end s2-s1" in calls(calls_log))
    time.sleep(0.1)  # s2's record is committed before s3 starts
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    recorded = json.loads(cli("runs", "show", "k9", "--json").stdout)
    done_before = [sid for sid, s in recorded["steps"].items() if s["status"] == "completed"]
    assert done_before[:2] == ["s1", "s2"]
    # the run's process is gone (nobody holds its lock): interrupted and resumable, not running
    (row,) = json.loads(cli("runs", "list", "--json").stdout)
    assert row == {
        **row,
        "status": "interrupted",
        "resumable": True,
        "completed": len(done_before),
        "total": 4,
    }
    listing = cli("runs", "list").stdout
    assert f"interrupted  {len(done_before)}/4" in listing
    assert "(resume: stepchain resume k9)" in listing
    result = cli("resume", "k9", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "completed"
    assert doc["steps"]["s4"]["output"] == "s4-s3-s2-s1"
    ends = [line for line in calls(calls_log) if line.startswith("end")]
    for sid in done_before:
        assert sum(1 for line in ends if line.split()[1].startswith(sid)) == 1, ends
    assert {line.split()[1].split("-")[0] for line in ends} == {"s1", "s2", "s3", "s4"}


def test_a_result_reaches_the_cache_while_a_long_step_runs_and_survives_kill_9(
    cli, write, calls_log
):
    path = write(
        "tail.yaml",
        """
        version: 1
        name: tail
        inputs: {seconds: {type: number, default: 60}}
        tools: {nap: {type: function, function: "tools:nap"}}
        steps:
          - {id: quick, tool: nap, with: {name: quick, seconds: 0.05}}
          - {id: slow, tool: nap, with: {name: "slow-{{ steps.quick.output }}", seconds: "{{ inputs.seconds }}"}}
        """,
    )
    proc = cli.spawn("run", path, "--run-id", "first")
    try:
        wait_for(lambda: "start slow-quick" in calls(calls_log))

        def cached() -> bool:  # written within a second or so, while `slow` still runs
            return json.loads(cli("cache", "info", "--json").stdout)["entries"] > 0

        wait_for(cached, timeout=10)
        assert "end slow-quick" not in calls(calls_log)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    result = cli("run", path, "--run-id", "second", "-i", "seconds=0.05", "--json")
    assert result.exit_code == 0, result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert steps["quick"]["cached"] is True  # a new run, not a resume: from the cache
    assert [line for line in calls(calls_log) if line.startswith("end")] == [
        "end quick",
        "end slow-quick",
    ]


def test_sigint_records_in_flight_steps_as_interrupted_and_exits_130(cli, write, calls_log):
    path = write("chain.yaml", CHAIN)
    proc = cli.spawn("run", path, "--run-id", "int-1")
    wait_for(lambda: "start s2-s1" in calls(calls_log))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "run int-1 interrupted" in err and "stepchain resume int-1" in err
    state = json.loads(cli("runs", "show", "int-1", "--json").stdout)
    assert state["status"] == "interrupted"
    assert state["steps"]["s1"]["status"] == "completed"
    assert state["steps"]["s2"]["status"] == "interrupted"
    assert state["steps"]["s3"]["status"] == "skipped"
    doc = cli.json("resume", "int-1")
    assert doc["status"] == "completed"
    assert sum(1 for line in calls(calls_log) if line == "end s1") == 1


def test_second_process_on_the_same_run_id_gets_a_clear_error(cli, write, calls_log):
    path = write(
        "chain.yaml", CHAIN.replace("seconds: 0.4}}\n  - {id: s2", "seconds: 60}}\n  - {id: s2")
    )
    first = cli.spawn("run", path, "--run-id", "busy")
    try:
        wait_for(lambda: "start s1" in calls(calls_log))
        second = cli.proc("run", path, "--run-id", "busy", "--resume")
        assert second.returncode == 1
        assert "error: run 'busy' is being driven by another process" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=90)
    assert first.returncode == 130
    state = json.loads(cli("runs", "show", "busy", "--json").stdout)
    assert state["status"] == "interrupted"  # the first driver's record, untouched by the second
    assert state["steps"]["s1"]["status"] == "interrupted"


def test_resume_after_edit_reruns_changed_steps_and_their_dependents(cli, write, calls_log):
    text = WORDS.replace("name: words\n", "name: words\ndefaults: {cache: false}\n")
    path = write("p.yaml", text)
    cli.json("run", path, "--run-id", "edit-1")
    calls_log.unlink()
    path.write_text(
        text.replace('"{{ steps.a.output | length }}"', '"{{ steps.a.output | upper }}"')
    )
    doc = cli.json("resume", "edit-1")
    assert calls(calls_log) == ["echo ABC", "echo ABC!"]
    assert doc["steps"]["a"]["cached"] and doc["steps"]["d"]["cached"]
    assert doc["steps"]["c"]["output"] == "ABC!"


def test_resume_of_unknown_run_is_a_clear_error(cli):
    result = cli("resume", "ghost")
    assert result.exit_code == 1
    assert "error: no run with id 'ghost'" in result.stderr


# -- commands and secrets -----------------------------------------------------------------
def test_run_steps_need_allow_run(cli, write, monkeypatch):
    path = write("p.yaml", "version: 1\nname: t\nsteps: [{id: hi, run: [echo, hello]}]\n")
    refused = cli("run", path)
    assert refused.exit_code == 2
    assert "would run command `echo hello` (steps.hi.run)" in refused.stderr
    assert "--allow-run" in refused.stderr and f"stepchain trust {path}" in refused.stderr
    assert "no runs recorded yet" in cli("runs", "list").stdout
    assert cli.json("run", path, "--allow-run")["steps"]["hi"]["output"] == "hello\n"
    monkeypatch.setenv("STEPCHAIN_ALLOW_RUN", "1")
    assert cli("run", path).exit_code == 0


def test_failing_command_reports_exit_status_and_stderr_tail(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        steps:
          - id: bad
            run: "echo partial; echo 'no such table: orders' >&2; exit 3"
        """,
    )
    doc = json.loads(cli("run", path, "--allow-run", "--json").stdout)
    assert doc["steps"]["bad"]["error"] == "command exited with status 3: no such table: orders"


def test_secrets_never_reach_records_cache_logs_or_errors(
    cli, write, monkeypatch, isolated_home, caplog, calls_log
):
    caplog.set_level("INFO", logger="stepchain")
    secret = "s3cr3t-T0KEN-value"
    monkeypatch.setenv("DB_TOKEN", secret)
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        secrets: [DB_TOKEN]
        tools: {leak: {type: function, function: "tools:leak_env"}}
        steps:
          - {id: leaky, tool: leak, with: {name: DB_TOKEN}, retries: 1, backoff: {initial: 0.01}}
          - {id: show, run: ["sh", "-c", "echo token=$T"], env: {T: "{{ secrets.DB_TOKEN }}"}}
          - {id: fail, run: "echo using $0 >&2; exit 1", retries: 0}
          - id: fail2
            run: ["sh", "-c", "echo bad token $T >&2; exit 2"]
            env: {T: "{{ secrets.DB_TOKEN }}"}
            retries: 0
        outputs: {out: "{{ steps.show.output }}"}
        """,
    )
    result = cli("run", path, "--allow-run", "--json", "--run-id", "sec")
    doc = json.loads(result.stdout)
    assert doc["steps"]["show"]["output"] == "token=***\n"
    assert doc["steps"]["fail2"]["error"] == "command exited with status 2: bad token ***"
    assert doc["steps"]["leaky"]["error"] == (
        "tool 'leak' raised ConnectionError: server refused token *** (after 2 attempts)"
    )
    assert "server refused token ***" in caplog.text  # the retry was logged, masked
    assert secret not in caplog.text
    assert secret not in result.stdout + result.stderr
    assert secret not in cli("runs", "show", "sec", "--json").stdout
    for file in isolated_home.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
    with diskcache.Cache(str(isolated_home / "cache")) as store:
        assert all(secret not in store[k] for k in store)


@pytest.mark.parametrize("flag", ["--json", None])
def test_pipeline_file_missing_is_a_usage_error(cli, flag):
    args = ["run", "missing.yaml"] + ([flag] if flag else [])
    result = cli(*args)
    assert result.exit_code == 2
    assert "error: no such pipeline file: missing.yaml" in result.stderr


def test_state_folder_defaults_to_dot_stepchain_in_working_directory(
    cli, write, monkeypatch, tmp_path
):
    monkeypatch.delenv("STEPCHAIN_HOME")
    path = write("p.yaml", "version: 1\nname: t\nsteps: [{id: a, template: x}]\n")
    cli.json("run", path)
    assert (tmp_path / ".stepchain" / "runs.db").exists()
    assert os.stat(tmp_path / ".stepchain").st_mode & 0o777 == 0o700
    assert Path(tmp_path / ".stepchain" / "cache").is_dir()


# -- the cache's batched paths give what its single ones give ------------------------------
def test_set_many_stores_what_put_stores(isolated_home):
    import random
    import string

    from stepchain.cache import ResultCache
    from stepchain.settings import Settings

    cache = ResultCache(Settings.from_env())
    big = "".join(random.choices(string.ascii_letters, k=100_000))  # goes to a file
    cache.put("old", "before", None, None)
    entries = [
        ("k1", "one", None, None),
        ("k2", {"a": [1, 2, {"b": None}]}, {"total_tokens": 3}, None),
        ("k3", ["x", 1.5, True], None, 3600),
        ("old", "after", None, None),  # present: replaced
        ("big", big, None, None),
        ("k1", "one again", None, None),  # the last write of a key wins
    ]
    cache.set_many(entries)
    cache.close()
    plain = diskcache.Cache(str(isolated_home / "cache"))
    try:
        assert plain.check() == []
        assert len(plain) == 5
        stored = {key: json.loads(plain.get(key)) for key in plain}
        assert stored["k1"]["output"] == "one again"
        assert stored["k2"]["output"] == {"a": [1, 2, {"b": None}]}
        assert stored["k2"]["usage"] == {"total_tokens": 3}
        assert plain.get("k3", expire_time=True)[1] is not None
        assert plain.get("k1", expire_time=True)[1] is None
        assert stored["old"]["output"] == "after"
        assert stored["big"]["output"] == big
    finally:
        plain.close()


def test_lookup_many_gives_what_get_gives(isolated_home):
    from stepchain.cache import ResultCache
    from stepchain.settings import Settings

    cache = ResultCache(Settings.from_env())
    cache.set_many([(f"k{i}", f"v{i}", {"total_tokens": i}, None) for i in range(1200)])
    cache.put("short", "gone soon", None, 0.01)
    cache.put("big", "y" * 200_000, None, None)
    time.sleep(0.05)
    keys = [f"k{i}" for i in range(0, 1300, 7)] + ["short", "big", "missing", "k7"]
    found = cache.lookup_many(keys)
    assert found == {key: cache.get(key) for key in keys if cache.get(key) is not None}
    assert "short" not in found and "missing" not in found and "big" in found
    assert found["k7"]["output"] == "v7"
    cache.set_many([("missing", "now here", None, None)])  # a key looked up and missed
    assert cache.lookup_many(["missing"])["missing"]["output"] == "now here"
    cache.close()
    plain = diskcache.Cache(str(isolated_home / "cache"))
    try:
        assert json.loads(plain.get("missing"))["output"] == "now here"
    finally:
        plain.close()


def test_pending_writes_are_seen_as_written_entries_would_be(isolated_home):
    from stepchain.cache import PendingWrites, ResultCache
    from stepchain.settings import Settings

    cache = ResultCache(Settings.from_env())
    writes = PendingWrites(cache)
    writes.add("k", {"n": (1, 2), 3: "x"}, {"total_tokens": 2}, None)
    writes.add("brief", "soon gone", None, 0.01)
    writes.add("odd", object(), None, None)  # not JSON: never a hit, and the write fails softly
    time.sleep(0.05)
    pending = writes.lookup_many(["k", "brief", "odd", "missing"])
    assert set(pending) == {"k"} and writes.get("odd") is None
    assert pending["k"]["output"] == {"n": [1, 2], "3": "x"}  # as JSON gives it back
    assert cache.get("k") is None  # not written yet
    writes.flush(force=True)
    assert cache.get("k")["output"] == pending["k"]["output"]
    assert cache.get("k")["usage"] == pending["k"]["usage"] == writes.get("k")["usage"]
    assert cache.get("brief") is None and cache.get("odd") is None
    cache.close()


def test_same_request_twice_in_one_run_is_a_hit_the_second_time(write, calls_log):
    path = write(
        "p.yaml",
        """
        version: 1
        name: twice
        tools: {echo: {type: function, function: "tools:echo"}}
        steps:
          - {id: a, tool: echo, with: {value: same}}
          - {id: b, needs: [a], tool: echo, with: {value: same}}
          - {id: c, needs: [b], template: "{{ steps.b.output }}"}
          - {id: d, needs: [c], template: "{{ steps.a.output }}"}
        """,
    )
    steps = Executor().run(path).steps
    assert [steps[s].cached for s in "abcd"] == [False, True, False, True]
    assert len(calls(calls_log)) == 1
