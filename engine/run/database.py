"""The run database (SQLite): what ran, with which inputs, and what every step did."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from stepchain.errors import RunLocked, RunNotFound, StepChainError
from stepchain.run.migrations import migrate
from stepchain.run.results import StepResult, now
from stepchain.settings import Settings, current_settings

_ENCODER = json.JSONEncoder(default=str)  # what json.dumps(..., default=str) uses, built once


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
    """The run database under the state folder (`runs.db`), versioned (see run.migrations)."""

    def __init__(self, settings: Settings | str | Path | None = None) -> None:
        if isinstance(settings, (str, Path)):
            settings = Settings.from_env(settings)
        self.settings = current_settings(settings)
        self.path = self.settings.ensure_home() / "runs.db"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db, self.path)  # the tables, created or brought up to date
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StepChainError(f"cannot open the run database {self.path}: {exc}") from None
        except BaseException:
            self._db.close()
            raise
        os.chmod(self.path, 0o600)
        self._staged: list[tuple] = []  # step rows saved since the last commit

    def close(self) -> None:
        self.commit()
        self._db.close()

    # -- writing ----------------------------------------------------------------------------
    def begin_run(
        self, run_id: str, *, name: str, path: str | None, text: str, text_hash: str, inputs: dict
    ) -> None:
        """Create the run's record, or update it when resuming (the pipeline may have changed)."""
        self._db.execute(
            """INSERT INTO runs (run_id, pipeline_name, pipeline_path, pipeline_text, pipeline_hash,
                                 inputs, status, started_at)
               VALUES (?, ?, ?, ?, ?, ?, 'running', ?)
               ON CONFLICT(run_id) DO UPDATE SET pipeline_name=excluded.pipeline_name,
                 pipeline_path=excluded.pipeline_path, pipeline_text=excluded.pipeline_text,
                 pipeline_hash=excluded.pipeline_hash, inputs=excluded.inputs, status='running',
                 finished_at=NULL, error=NULL""",
            (run_id, name, path, text, text_hash, json.dumps(inputs), now().isoformat()),
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
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                """INSERT INTO steps (run_id, step_id, position, result, status, cache_key)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(run_id, step_id) DO UPDATE SET position=excluded.position,
                     result=excluded.result, status=excluded.status,
                     cache_key=excluded.cache_key""",
                rows,
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def finish_run(
        self, run_id: str, status: str, outputs: dict, usage: dict, error: str | None = None
    ) -> None:
        self.commit()
        self._db.execute(
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

    # -- reading ----------------------------------------------------------------------------
    def exists(self, run_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM runs WHERE run_id=?", (run_id,)).fetchone() is not None
        )

    def load_run_state(self, run_id: str) -> RunState:
        """Everything recorded about a run.

        Raises:
            RunNotFound: when no run has this id.
        """
        row = self._db.execute(
            """SELECT run_id, status, pipeline_name, pipeline_path, pipeline_text, pipeline_hash,
                      inputs, started_at, finished_at, outputs, usage, error
               FROM runs WHERE run_id=?""",
            (run_id,),
        ).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id '{run_id}'", "list runs with `stepchain runs list`")
        steps = self._db.execute(
            "SELECT result FROM steps WHERE run_id=? ORDER BY position", (run_id,)
        ).fetchall()
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
        rows = self._db.execute(
            """SELECT r.run_id, r.pipeline_name, r.status, r.started_at, r.finished_at,
                      (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.run_id AND s.status='completed'),
                      (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.run_id)
               FROM runs r ORDER BY r.started_at DESC LIMIT ?""",
            (limit,),
        ).fetchall()
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
