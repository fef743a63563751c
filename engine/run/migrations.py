"""Numbered migrations of the run database, tracked in SQLite's `PRAGMA user_version`.

`MIGRATIONS[n - 1]` takes a database from version n - 1 to version n. A database written before
run records were versioned has user_version 0 and the tables of version 1; so has a new, empty
file, minus the tables: version 1 creates them only where they are missing.

`migrate` applies every pending migration in one transaction, so a database is always at one
version or the next, never in between. A database of a newer version than this code knows is
refused: its tables may mean something this code would get wrong.

To change the schema, append a function with `@migration`; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from stepchain.errors import StepChainError

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(func: Migration) -> Migration:
    MIGRATIONS.append(func)
    return func


@migration
def m001_runs_and_steps(db: sqlite3.Connection) -> None:
    """The schema of StepChain before run records were versioned, exactly."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    pipeline_path TEXT,
    pipeline_text TEXT NOT NULL,
    pipeline_hash TEXT NOT NULL,
    inputs TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outputs TEXT,
    usage TEXT,
    error TEXT
)"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    result TEXT NOT NULL,
    status TEXT NOT NULL,
    cache_key TEXT,
    PRIMARY KEY (run_id, step_id)
)"""
    )


@migration
def m002_runs_by_start(db: sqlite3.Connection) -> None:
    """`stepchain runs list` reads the latest runs first: an index, not a sort of every run."""
    db.execute("CREATE INDEX IF NOT EXISTS runs_by_start ON runs(started_at)")


LATEST = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(
    db: sqlite3.Connection, path: Path | str, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring the database up to the latest version; returns the version it was at.

    `db` is in autocommit mode (isolation_level=None), with a busy timeout: a second process
    opening the database at the same moment waits for the first one's migration, then finds
    nothing left to do.

    Raises:
        StepChainError: the database is of a newer version than this code knows.
    """
    latest = len(migrations)
    found = schema_version(db)
    _refuse_newer(found, latest, path)
    if found == latest:  # the usual case: no transaction, no lock
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(db)  # another process may have migrated it meanwhile
        _refuse_newer(found, latest, path)
        for version in range(found + 1, latest + 1):
            migrations[version - 1](db)
        db.execute(f"PRAGMA user_version = {latest:d}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def _refuse_newer(found: int, latest: int, path: Path | str) -> None:
    if found > latest:
        raise StepChainError(
            f"the run database {path} is of version {found}, newer than this StepChain knows "
            f"(version {latest}); upgrade StepChain to use it"
        )
