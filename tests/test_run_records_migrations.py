"""Run records are versioned: a database written before versioning is migrated and keeps working."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from stepchain.cache import cache_key
from stepchain.errors import StepChainError
from stepchain.run.database import Storage
from stepchain.run.migrations import LATEST, MIGRATIONS, migrate, schema_version

# Written by StepChain at commit 4df2a67 (before versioning), see tests/data/README.md
V0 = Path(__file__).parent / "data" / "runs-v0.db"


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return schema_version(db)


@pytest.fixture
def v0_home(isolated_home: Path) -> Path:
    """The state folder holding a copy of the run database written before versioning."""
    isolated_home.mkdir(mode=0o700)
    shutil.copyfile(V0, isolated_home / "runs.db")
    assert user_version(isolated_home / "runs.db") == 0
    return isolated_home


def shape(db: sqlite3.Connection) -> dict:
    """Tables with their columns, keys and indexes: what a schema means, whitespace aside."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {
        table: {
            "columns": db.execute(f"PRAGMA table_info({table})").fetchall(),
            "foreign keys": db.execute(f"PRAGMA foreign_key_list({table})").fetchall(),
            "indexes": sorted(db.execute(f"PRAGMA index_list({table})").fetchall()),
        }
        for table in sorted(tables)
    }


def test_a_database_from_before_versioning_keeps_its_runs_and_resumes(cli, v0_home, monkeypatch):
    listing = cli("runs", "list")
    assert listing.exit_code == 0, listing.stderr
    assert user_version(v0_home / "runs.db") == LATEST  # the first open migrated it
    rows = {r["run_id"]: r for r in json.loads(cli("runs", "list", "--json").stdout)}
    assert {
        k: (r["pipeline"], r["status"], r["completed"], r["recorded"]) for k, r in rows.items()
    } == {
        "fixture-ok": ("fixture", "completed", 4, 4),
        "fixture-failed": ("fixture", "failed", 2, 4),
        "slow-interrupted": ("slow", "interrupted", 1, 3),
    }
    assert list(rows) == ["slow-interrupted", "fixture-failed", "fixture-ok"]  # latest first
    for run_id in rows:
        assert run_id in listing.stdout

    ok = json.loads(cli("runs", "show", "fixture-ok", "--json").stdout)
    assert ok["status"] == "completed" and ok["inputs"] == {"quarter": "Q4 2023"}
    assert ok["outputs"] == {"report": "Q4 2023: alpha x0, beta x1, gamma x2 at rate 2"}
    assert {sid: s["status"] for sid, s in ok["steps"].items()} == dict.fromkeys(
        ["items", "rate", "each", "report"], "completed"
    )
    assert ok["steps"]["each"]["output"] == ["alpha x0", "beta x1", "gamma x2"]
    assert len(ok["steps"]["rate"]["cache_key"]) == 64
    failed = json.loads(cli("runs", "show", "fixture-failed", "--json").stdout)
    assert failed["status"] == "failed" and failed["inputs"] == {"quarter": "Q1 2024"}
    assert failed["steps"]["rate"]["status"] == "failed"
    assert "'west'" in failed["steps"]["rate"]["error"]
    assert failed["steps"]["report"]["status"] == "skipped"
    slow = json.loads(cli("runs", "show", "slow-interrupted", "--json").stdout)
    assert [s["status"] for s in slow["steps"].values()] == ["completed", "interrupted", "skipped"]

    # its file is gone: the resume runs the recorded pipeline text. (Its completed steps were
    # recorded with CACHE_FORMAT 1 keys, which today's requests do not match, so they run again.)
    monkeypatch.setenv("REGION", "north")
    resumed = cli.json("resume", "fixture-failed")
    assert resumed["status"] == "completed"
    assert resumed["outputs"] == {"report": "Q1 2024: alpha x0, beta x1, gamma x2 at rate 2"}
    assert resumed["steps"]["rate"]["output"] == 2 and not resumed["steps"]["rate"]["cached"]
    recorded = {sid: s["cache_key"] for sid, s in failed["steps"].items()}
    assert recorded["items"] == cache_key(
        "template", {"output": ["alpha", "beta", "gamma"]}, version=1
    )
    after = json.loads(cli("runs", "show", "fixture-failed", "--json").stdout)
    assert after["status"] == "completed"
    assert {s["status"] for s in after["steps"].values()} == {"completed"}
    assert json.loads(cli("runs", "show", "fixture-ok", "--json").stdout) == ok  # untouched


def test_a_database_from_the_future_is_refused_in_one_line(cli, v0_home):
    path = v0_home / "runs.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA user_version = 999")
    before = path.read_bytes()
    for args in (["runs", "list"], ["runs", "show", "fixture-ok"], ["resume", "fixture-failed"]):
        result = cli.proc(*args)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines() == [
            f"error: the run database {path} is of version 999, newer than this StepChain knows "
            f"(version {LATEST}); upgrade StepChain to use it"
        ]
    assert path.read_bytes() == before  # not touched


def test_a_damaged_run_database_is_moved_aside_with_a_warning(cli, isolated_home):
    isolated_home.mkdir(mode=0o700)
    (isolated_home / "runs.db").write_bytes(b"not a database" * 500)
    result = cli.proc("runs", "list")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"run database {isolated_home / 'runs.db'} cannot be read")
    (aside,) = isolated_home.glob("runs.damaged-*.db")  # more in tests/security/test_state.py
    assert aside.read_bytes() == b"not a database" * 500


def test_version_1_is_the_schema_from_before_versioning(tmp_path):
    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    assert migrate(fresh, "fresh.db", MIGRATIONS[:1]) == 0
    assert schema_version(fresh) == 1
    with closing(sqlite3.connect(V0)) as old:
        assert shape(fresh) == shape(old)
    fresh.close()


def test_a_new_database_starts_at_the_latest_version(isolated_home):
    storage = Storage()
    storage.close()
    assert user_version(isolated_home / "runs.db") == LATEST
    assert LATEST == len(MIGRATIONS) >= 2
    with closing(sqlite3.connect(isolated_home / "runs.db")) as db:
        assert "runs_by_start" in [r[1] for r in db.execute("PRAGMA index_list(runs)")]
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5"
        ).fetchall()
    assert "runs_by_start" in str(plan)  # `runs list` walks the index


def test_migrations_apply_in_one_transaction(v0_home):
    path = v0_home / "runs.db"

    def breaks(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration failed")

    db = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(RuntimeError, match="migration failed"):
        migrate(db, path, [*MIGRATIONS, breaks])
    assert schema_version(db) == 0  # nothing of the earlier migrations stayed either
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables and "runs_by_start" not in tables
    assert migrate(db, path) == 0 and schema_version(db) == LATEST
    assert migrate(db, path) == LATEST  # nothing left to do
    db.close()


def test_migrate_refuses_a_newer_database(tmp_path):
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(StepChainError, match="upgrade StepChain"):
        migrate(db, "x.db")
    db.close()
