"""What a run produces: one StepResult per step and a RunResult for the whole run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["completed", "failed", "skipped", "interrupted"]
RunStatus = Literal["completed", "failed", "interrupted"]


@dataclass
class StepResult:
    """The outcome of one step (the names StepChain 0.3 users know)."""

    step_id: str
    status: Status
    output: Any = None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cache_key: str | None = None
    reason: str | None = None  # why a step was skipped or interrupted
    request: Any = None  # the rendered request, masked (a list for foreach; none for templates)
    tries: list[dict[str, Any]] = field(default_factory=list)  # each attempt's times and end
    # a foreach step's tries, one list per item (empty: from the cache); None for other steps
    item_tries: list[list[dict[str, Any]]] | None = None
    # what failed, from the error's class: rate_limit, timeout, server, auth, bad_request,
    # schema, tool, template, command, ... (see stepchain.errors.StepError); None if none did
    error_kind: str | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.completed_at:
            return round((self.completed_at - self.started_at).total_seconds(), 6)
        return None

    def to_dict(self) -> dict[str, Any]:
        # shallow: asdict() would deep-copy every output just to serialise it
        doc = {name: getattr(self, name) for name in _STEP_FIELDS}
        doc["usage"] = dict(self.usage)
        doc["tries"] = list(self.tries)
        doc["started_at"] = _iso(self.started_at)
        doc["finished_at"] = _iso(doc.pop("completed_at"))
        doc["duration_s"] = self.duration_s
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> StepResult:
        values = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        values["started_at"] = _parse(doc.get("started_at"))
        values["completed_at"] = _parse(doc.get("finished_at") or doc.get("completed_at"))
        return cls(**values)


_STEP_FIELDS = tuple(f.name for f in dataclasses.fields(StepResult))


@dataclass(repr=False)
class RunResult:
    """A whole run: its id, status, outputs and every step's result, in pipeline order."""

    run_id: str
    status: RunStatus
    steps: dict[str, StepResult]
    outputs: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def __repr__(self) -> str:
        # Short: asyncio.run formats the repr of the result it returns, and a run may have
        # thousands of steps (their outputs included); `to_dict()` has everything.
        counts: dict[str, int] = {}
        for result in self.steps.values():
            counts[result.status] = counts.get(result.status, 0) + 1
        return f"RunResult(run_id={self.run_id!r}, status={self.status!r}, steps={counts})"

    @property
    def results(self) -> list[StepResult]:
        return list(self.steps.values())

    def to_dict(self) -> dict[str, Any]:
        """The document `stepchain run --json` prints."""
        steps = {}
        for sid, result in self.steps.items():
            doc = result.to_dict()
            steps[sid] = {k: doc[k] for k in _JSON_STEP_KEYS}
            if result.reason:
                steps[sid]["reason"] = result.reason
            if result.error_kind:
                steps[sid]["error_kind"] = result.error_kind
        return {
            "run_id": self.run_id,
            "status": self.status,
            "outputs": self.outputs,
            "steps": steps,
            "usage": self.usage,
            **({"error": self.error} if self.error else {}),
        }

    @property
    def exit_code(self) -> int:
        return {"completed": 0, "failed": 1, "interrupted": 130}[self.status]


_JSON_STEP_KEYS = (
    "status",
    "cached",
    "attempts",
    "output",
    "error",
    "started_at",
    "finished_at",
    "duration_s",
    "usage",
)


def now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value) if value else None
