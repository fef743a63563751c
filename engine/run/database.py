"""The run database (SQLite): what ran, with which inputs, and what every step did."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stepchain.errors import RunLocked, RunNotFound, StepChainError
from stepchain.run.migrations import migrate
from stepchain.run.results import StepResult, now
from stepchain.settings import LOGGER_NAME, Settings, current_settings

log = logging.getLogger(LOGGER_NAME)

_ENCODER = json.JSONEncoder(default=str)  # what json.dumps(..., default=str) uses, built once

# SQLite's primary result codes (the low byte of `sqlite_errorcode`)
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class OutOfSpace(StepChainError):
    """The run database (or the state folder) could not be written: the disk is full."""


def _code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_damaged(exc: BaseException) -> bool:
    """Whether SQLite says the file is not a database, or a damaged one (not busy, not full)."""
    return isinstance(exc, sqlite3.DatabaseError) and _code(exc) in (
        _SQLITE_CORRUPT,
        _SQLITE_NOTADB,
    )


def is_out_of_space(exc: BaseException) -> bool:
    """Whether a write failed for want of space (a full disk, a quota, a file-size limit).

    SQLite reports a short write as SQLITE_FULL, and a failed one (EFBIG) as an I/O error.
    """
    if isinstance(exc, sqlite3.Error):
        return _code(exc) in (_SQLITE_FULL, _SQLITE_IOERR)
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


@dataclass
class RunState:
    """A run as recorded: `plan` is the pipeline it ran, `results` its steps' results."""

    run_id: str
    status: str
    pipeline_name: str
    pipeline_path: str | None
    pipeline_text: str
    pipeline_hash: str
    inputs: dict[str, Any]
    started_at: str
    finished_at: str | None
    outputs: dict[str, Any] | None
    usage: dict[str, int]
    error: str | None
    results: list[StepResult] = field(default_factory=list)

    @property
    def plan(self):
        from stepchain.pipeline.load import load_pipeline_text

        base = Path(self.pipeline_path).parent if self.pipeline_path else None
        name = Path(self.pipeline_path).name if self.pipeline_path else "<recorded>"
        return load_pipeline_text(self.pipeline_text, name, base)

    def result(self, step_id: str) -> StepResult | None:
        return next((r for r in self.results if r.step_id == step_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "pipeline": {
                "name": self.pipeline_name,
                "path": self.pipeline_path,
                "hash": self.pipeline_hash,
            },
            "inputs": self.inputs,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "outputs": self.outputs,
            "usage": self.usage,
            "error": self.error,
            "steps": {r.step_id: r.to_dict() for r in self.results},
        }


class Storage:
    """The run database under the state folder (`runs.db`), versioned (see run.migrations).

    A damaged database (not SQLite, truncated, bad pages) found on opening it or reading from
    it before a run starts is moved aside with a warning and an empty one takes its place, as
    a damaged cache is: the runs recorded in it are kept in the moved file.
    """

    def __init__(self, settings: Settings | str | Path | None = None) -> None:
        if isinstance(settings, (str, Path)):
            settings = Settings.from_env(settings)
        self.settings = current_settings(settings)
        self.path = self.settings.ensure_home() / "runs.db"
        self._writing = False  # a run's rows were written: a damaged file is no longer moved
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            if is_out_of_space(exc):
                raise StepChainError(
                    f"cannot open the run database {self.path}: {exc} (is the disk full?)",
                    "free some space, then try again",
                ) from None
            if not is_damaged(exc):
                raise StepChainError(f"cannot open the run database {self.path}: {exc}") from None
            self._db = self._replace(exc)
        os.chmod(self.path, 0o600)
        self._staged: list[tuple] = []  # step rows saved since the last commit

    def _connect(self) -> sqlite3.Connection:
        self._opened = _inode(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            migrate(db, self.path)  # the tables, created or brought up to date
        except BaseException:
            db.close()
            raise
        return db

    def _replace(self, error: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move the damaged file aside (once, whichever process sees it first); open a new one."""
        aside = self.path.with_name(f"runs.damaged-{time.strftime('%Y%m%dT%H%M%S')}.db")
        if aside.exists():
            aside = aside.with_name(f"runs.damaged-{time.time_ns()}.db")
        locks = self.path.parent / "locks"
        locks.mkdir(exist_ok=True, mode=0o700)
        with open(locks / "runs.db.repair", "a+") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # held only for a few renames
            moved = self._opened is not None and _inode(self.path) == self._opened
            if moved:  # not yet replaced by another process
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    extra = self.path.with_name(self.path.name + suffix)
                    if extra.exists():
                        os.replace(extra, aside.with_name(aside.name + suffix))
            try:
                db = self._connect()
            except sqlite3.DatabaseError as again:
                raise StepChainError(
                    f"cannot open the run database {self.path}: {again}",
                    f"move {self.path} out of the way; a new one is made on the next command",
                ) from None
        if moved:
            log.warning(
                "run database %s cannot be read (%s): damaged; moved it to %s (the runs "
                "recorded before are there) and started an empty one",
                self.path,
                error,
                aside,
            )
        return db

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A read; damage found before this process wrote anything replaces the database."""
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            if not is_damaged(exc):
                raise
            if self._writing:
                raise StepChainError(
                    f"the run database {self.path} is damaged: {exc}",
                    "the next stepchain command moves it aside and starts an empty one",
                ) from None
            self._db.close()
            self._db = self._replace(exc)
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        self.commit()
        self._db.close()

    # -- writing ----------------------------------------------------------------------------
    def begin_run(
        self, run_id: str, *, name: str, path: str | None, text: str, text_hash: str, inputs: dict
    ) -> None:
        """Create the run's record, or update it when resuming (the pipeline may have changed)."""
        self._writing = True
        self._write(
            """INSERT INTO runs (run_id, pipeline_name, pipeline_path, pipeline_text, pipeline_hash,
                                 inputs, status, started_at)
               VALUES (?, ?, ?, ?, ?, ?, 'running', ?)
               ON CONFLICT(run_id) DO UPDATE SET pipeline_name=excluded.pipeline_name,
                 pipeline_path=excluded.pipeline_path, pipeline_text=excluded.pipeline_text,
                 pipeline_hash=excluded.pipeline_hash, inputs=excluded.inputs, status='running',
                 finished_at=NULL, error=NULL""",
            (run_id, name, path, text, text_hash, json.dumps(inputs), now().isoformat()),
        )

    def _write(self, sql: str, params: tuple) -> int:
        """One statement; a full disk becomes OutOfSpace (nothing of the statement is kept)."""
        try:
            return self._db.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise self._out_of_space(exc) from None

    def _out_of_space(self, exc: sqlite3.Error) -> BaseException:
        if self._db.in_transaction:  # SQLite rolls back on its own after most I/O errors
            self._db.execute("ROLLBACK")
        if not is_out_of_space(exc):
            return exc
        return OutOfSpace(
            f"cannot write the run database {self.path}: {exc} (is the disk full?)",
            "free some space, then resume the run",
        )

    def save_step(self, run_id: str, position: int, result: StepResult) -> None:
        """Stage one step's result; `commit()` makes it durable (all staged rows, one statement)."""
        self._staged.append(
            (
                run_id,
                result.step_id,
                position,
                _ENCODER.encode(result.to_dict()),
                result.status,
                result.cache_key,
            )
        )

    def commit(self) -> None:
        if not self._staged:
            return
        rows, self._staged = self._staged, []
        try:
            self._db.execute("BEGIN")
            self._db.executemany(
                """INSERT INTO steps (run_id, step_id, position, result, status, cache_key)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(run_id, step_id) DO UPDATE SET position=excluded.position,
                     result=excluded.result, status=excluded.status,
                     cache_key=excluded.cache_key""",
                rows,
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._out_of_space(exc) from None
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def finish_run(
        self, run_id: str, status: str, outputs: dict, usage: dict, error: str | None = None
    ) -> None:
        self.commit()
        self._write(
            "UPDATE runs SET status=?, finished_at=?, outputs=?, usage=?, error=? WHERE run_id=?",
            (
                status,
                now().isoformat(),
                json.dumps(outputs, default=str),
                json.dumps(usage),
                error,
                run_id,
            ),
        )

    def mark_failed(self, run_id: str, error: str) -> bool:
        """After a failed write: drop what was not written, record the run as failed.

        Small enough to fit where a step's output did not; False when even that failed (the
        run then stays `running`, which `runs list` shows as interrupted: resumable too).
        """
        self._staged = []
        try:
            return (
                self._write(
                    "UPDATE runs SET status='failed', finished_at=?, error=? WHERE run_id=?",
                    (now().isoformat(), error, run_id),
                )
                == 1
            )
        except (sqlite3.Error, StepChainError):
            return False

    # -- reading ----------------------------------------------------------------------------
    def exists(self, run_id: str) -> bool:
        return bool(self._rows("SELECT 1 FROM runs WHERE run_id=?", (run_id,)))

    def load_run_state(self, run_id: str) -> RunState:
        """Everything recorded about a run.

        Raises:
            RunNotFound: when no run has this id.
        """
        found = self._rows(
            """SELECT run_id, status, pipeline_name, pipeline_path, pipeline_text, pipeline_hash,
                      inputs, started_at, finished_at, outputs, usage, error
               FROM runs WHERE run_id=?""",
            (run_id,),
        )
        if not found:
            raise RunNotFound(f"no run with id '{run_id}'", "list runs with `stepchain runs list`")
        row = found[0]
        steps = self._rows("SELECT result FROM steps WHERE run_id=? ORDER BY position", (run_id,))
        return RunState(
            run_id=row[0],
            status=row[1],
            pipeline_name=row[2],
            pipeline_path=row[3],
            pipeline_text=row[4],
            pipeline_hash=row[5],
            inputs=json.loads(row[6]),
            started_at=row[7],
            finished_at=row[8],
            outputs=json.loads(row[9]) if row[9] else None,
            usage=json.loads(row[10]) if row[10] else {},
            error=row[11],
            results=[StepResult.from_dict(json.loads(s[0])) for s in steps],
        )

    def previous_run(self, run_id: str, pipeline_name: str, started_at: str) -> str | None:
        """The id of the latest run of the same pipeline started before this one, if any."""
        row = self._db.execute(
            """SELECT run_id FROM runs WHERE pipeline_name=? AND run_id<>?
                 AND started_at<=? ORDER BY started_at DESC LIMIT 1""",
            (pipeline_name, run_id, started_at),
        ).fetchone()
        return row[0] if row else None

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent runs, newest first, with completed/total steps.

        A run still marked `running` whose process is gone (nobody holds its lock: it was
        killed without a chance to record it) is listed as `interrupted` and `resumable`.
        """
        rows = self._rows(
            """SELECT r.run_id, r.pipeline_name, r.status, r.started_at, r.finished_at,
                      (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.run_id AND s.status='completed'),
                      (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.run_id)
               FROM runs r ORDER BY r.started_at DESC LIMIT ?""",
            (limit,),
        )
        keys = (
            "run_id",
            "pipeline",
            "status",
            "started_at",
            "finished_at",
            "completed",
            "recorded",
        )
        runs = [dict(zip(keys, row, strict=True)) for row in rows]
        for run in runs:
            run["total"] = run["recorded"]
            run["resumable"] = run["status"] in ("failed", "interrupted")
            if run["status"] == "running" and not self.is_driven(run["run_id"]):
                run["status"], run["resumable"] = "interrupted", True
                run["total"] = max(run["recorded"], self._step_count(run["run_id"]))
        return runs

    def _step_count(self, run_id: str) -> int:
        """How many steps the run's recorded pipeline has (its text, counted without checks)."""
        row = self._db.execute(
            "SELECT pipeline_text FROM runs WHERE run_id=?", (run_id,)
        ).fetchone()
        try:
            steps = yaml.safe_load(row[0] or "").get("steps")
        except (yaml.YAMLError, AttributeError):
            return 0
        return len(steps) if isinstance(steps, list) else 0

    def is_driven(self, run_id: str) -> bool:
        """Whether a live process holds the run's lock (this one included)."""
        path = self._lock_path(run_id)
        if not path.exists():
            return False
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def _lock_path(self, run_id: str) -> Path:
        name = hashlib.sha256(run_id.encode()).hexdigest()[:32]
        return self.settings.home / "locks" / f"{name}.lock"

    # -- exclusivity ------------------------------------------------------------------------
    @contextmanager
    def lock(self, run_id: str) -> Iterator[None]:
        """Hold the run id for this process; a second driver gets RunLocked at once.

        An OS file lock, so a process killed with -9 releases it automatically.
        """
        path = self._lock_path(run_id)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(
                    f"run '{run_id}' is being driven by another process",
                    "wait for it to finish, or use another --run-id",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_dev, found.st_ino)
