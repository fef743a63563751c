"""Damaged state and a full disk: one clear line, nothing recorded lost, the run resumable."""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
from contextlib import closing

import pytest

PIPELINE = """
version: 1
name: state
inputs: {x: {type: string, default: a}}
steps:
  - {id: first, template: "{{ inputs.x }}1"}
  - {id: second, template: "{{ steps.first.output }}2"}
"""

# `large` writes an output of 3 MB: more than a file may grow to under the limit below
BIG = """
version: 1
name: big
steps:
  - {id: small, template: "ok"}
  - {id: large, template: "{{ 'x' * 3000000 }}", needs: [small]}
  - {id: after, template: "{{ steps.large.output | length }}"}
"""


def _checkpointed(home):
    """Fold the WAL into runs.db, so damaging the file damages what is recorded."""
    with closing(sqlite3.connect(home / "runs.db", isolation_level=None)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        (home / f"runs.db{suffix}").unlink(missing_ok=True)
    return home / "runs.db"


def _damage(db, how):
    data = db.read_bytes()
    if how == "garbage":
        db.write_bytes(b"not a database at all" * 300)
    elif how == "truncated":
        db.write_bytes(data[: len(data) // 2])
    else:  # "bad pages": the header and the schema intact, every page after the first not
        db.write_bytes(data[:4096] + b"\x5a" * (len(data) - 4096))


@pytest.fixture
def recorded(cli, write, isolated_home):
    """A home with two runs recorded, then a damaged copy of them in place."""
    path = write("p.yaml", PIPELINE)
    for run_id in ("one", "two"):
        assert cli.proc("run", path, "--run-id", run_id).returncode == 0
    return path, _checkpointed(isolated_home)


@pytest.mark.parametrize("how", ["garbage", "truncated", "bad pages"])
def test_a_damaged_run_database_is_moved_aside_and_the_run_goes_on(cli, recorded, how):
    path, db = recorded
    kept = db.read_bytes()
    _damage(db, how)
    damaged = db.read_bytes()

    ran = cli.proc("run", path, "--run-id", "three", "--json")
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr
    (aside,) = db.parent.glob("runs.damaged-*.db")
    warnings = [line for line in ran.stderr.splitlines() if "run database" in line]
    assert warnings == [
        f"run database {db} cannot be read ({_reason(how)}): damaged; moved it to {aside} "
        "(the runs recorded before are there) and started an empty one"
    ]
    assert json.loads(ran.stdout)["steps"]["second"]["output"] == "a12"
    assert aside.read_bytes() == damaged != kept  # nothing of it lost: kept, out of the way

    listed = cli.proc("runs", "list")
    assert listed.returncode == 0 and "run database" not in listed.stderr  # warned once
    assert "three" in listed.stdout and "one" not in listed.stdout


@pytest.mark.parametrize("how", ["garbage", "truncated", "bad pages"])
def test_runs_list_on_a_damaged_run_database_works(cli, recorded, how):
    _path, db = recorded
    _damage(db, how)
    listed = cli.proc("runs", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "no runs recorded yet"
    assert "Traceback" not in listed.stderr
    assert f"run database {db} cannot be read" in listed.stderr
    assert len(list(db.parent.glob("runs.damaged-*.db"))) == 1
    shown = cli.proc("runs", "show", "one")
    assert shown.returncode == 1
    assert shown.stderr.splitlines()[-2:] == [
        "error: no run with id 'one'",
        "  hint: list runs with `stepchain runs list`",
    ]


def _reason(how):
    return "file is not a database" if how == "garbage" else "database disk image is malformed"


def _small_files():
    """In the child: no file may grow past 1 MB (EFBIG, as on a full disk), without SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


def test_a_full_disk_fails_the_run_in_one_line_and_it_resumes(cli, write, isolated_home):
    path = write("big.yaml", BIG)
    full = cli.proc("run", path, "--run-id", "full", "--json", preexec_fn=_small_files)
    assert full.returncode == 1
    assert full.stdout == ""
    assert "Traceback" not in full.stderr and "internal error" not in full.stderr
    db = isolated_home / "runs.db"
    assert full.stderr.splitlines()[-2:] == [
        f"error: cannot write the run database {db}: disk I/O error (is the disk full?); "
        "run 'full' stopped and is marked failed",
        "  hint: free some space, then `stepchain resume full`",
    ]
    shown = json.loads(cli("runs", "show", "full", "--json").stdout)
    assert shown["status"] == "failed"  # not left `running`
    assert "is the disk full?" in shown["error"]
    assert shown["steps"]["small"]["status"] == "completed"  # what was written is kept
    assert "large" not in shown["steps"]
    listed = cli("runs", "list").stdout
    assert "failed" in listed and "(resume: stepchain resume full)" in listed

    resumed = cli.proc("resume", "full", "--json")  # space is back
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["status"] == "completed"
    assert doc["steps"]["after"]["output"] == 3_000_000
    assert doc["steps"]["small"]["cached"] is True
    assert json.loads(cli("runs", "show", "full", "--json").stdout)["status"] == "completed"


def test_a_full_disk_before_the_run_is_recorded_is_one_line(cli, write, isolated_home):
    """Nothing fits, not even the run's record: an error, and no run left `running`."""
    path = write("p.yaml", PIPELINE)
    inputs = write("in.json", json.dumps({"x": "x" * 1_100_000}))
    full = cli.proc(
        "run", path, "--inputs-file", inputs, "--run-id", "none", preexec_fn=_small_files
    )
    assert full.returncode == 1
    assert "Traceback" not in full.stderr and "internal error" not in full.stderr
    assert full.stderr.splitlines()[-2:] == [
        f"error: cannot write the run database {isolated_home / 'runs.db'}: disk I/O error "
        "(is the disk full?); run 'none' was not recorded",
        "  hint: free some space, then run it again",
    ]
    assert "no runs recorded yet" in cli("runs", "list").stdout
    again = cli.proc("run", path, "--inputs-file", inputs, "--run-id", "none", "--json")
    assert again.returncode == 0, again.stderr  # space is back: it runs
    assert json.loads(again.stdout)["steps"]["second"]["output"] == "x" * 1_100_000 + "12"


def _no_files():
    """In the child: no file may grow at all (every write is EFBIG)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_no_space_for_the_state_folder_is_one_line_for_every_command(cli, write, isolated_home):
    path = write("p.yaml", PIPELINE)
    db = isolated_home / "runs.db"
    for args in (["run", path], ["runs", "list"]):
        result = cli.proc(*args, preexec_fn=_no_files)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"error: cannot open the run database {db}: disk I/O error (is the disk full?)",
            "  hint: free some space, then try again",
        ]
    store = isolated_home / "trusted.json"
    for args in (["trust", path], ["trust", "--package", "yaml"]):
        result = cli.proc(*args, preexec_fn=_no_files)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"error: cannot write {store}: File too large; nothing was trusted",
            "  hint: free some space (or fix the folder's permissions), then try again",
        ]
    assert not store.exists() and not list(isolated_home.glob(".trusted.json.*"))


def test_no_space_for_a_decomposed_file_is_one_line(cli, tmp_path):
    from tests.support.fake_openai import FakeOpenAI, Reply

    answer = {"version": 1, "name": "d", "steps": [{"id": "a", "template": "x"}]}
    with FakeOpenAI() as fake:
        fake.script(Reply.json(answer))
        out = tmp_path / "d.yaml"
        result = cli.proc("decompose", "a task", "-o", out, env=fake.env(), preexec_fn=_no_files)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-2:] == [
        f"error: cannot write {out}: File too large",
        "  hint: free some space (or raise the quota), then try again",
    ]
    assert list(tmp_path.glob("*d.yaml*")) == []  # no half-written file left
