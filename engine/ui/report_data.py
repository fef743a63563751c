"""What a run report shows, gathered from the run database: one RunReport, no formatting here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stepchain.errors import StepChainError
from stepchain.run.database import RunState, Storage
from stepchain.run.results import StepResult

OUTPUT_LIMIT = 64 * 1024  # characters of one output (or definition) embedded, at most
REPORT_BUDGET = 3 * 512 * 1024  # characters shared by the outputs and definitions of a run
MIN_OUTPUT_LIMIT = 256
NOT_RECORDED = ("running", "pending")  # the states of steps a run in progress has not recorded


@dataclass
class Text:
    """A value as text for the report, cut to a limit (`size` is the whole text's length)."""

    text: str
    size: int

    @property
    def truncated(self) -> bool:
        return len(self.text) < self.size


@dataclass
class StepView:
    """One step of the report: its record, its definition, its place in the graph."""

    result: StepResult
    kind: str
    needs: list[str]
    layer: int
    definition: Text | None  # the step as written in the recorded pipeline (its templates)
    request: Text | None  # the rendered request, where the run record has it
    output: Text | None
    items: int | None  # a foreach step's item count
    # against the previous run: ran, replayed, ran again (request changed) ...; in a run in
    # progress, a step not recorded yet is `running` (its dependencies completed: it runs or
    # waits for a slot) or `pending` (waiting for its dependencies)
    change: str
    since: datetime | None = None  # a `running` step: when its last dependency completed

    @property
    def step_id(self) -> str:
        return self.result.step_id


@dataclass
class RunReport:
    """Everything a report shows about one run, in pipeline order."""

    state: RunState
    steps: list[StepView]
    layers: list[list[str]]
    previous_run: str | None
    notes: list[str] = field(default_factory=list)  # what the report could not show, and why

    @property
    def in_progress(self) -> bool:
        return self.state.status == "running"

    @property
    def started(self) -> datetime | None:
        return _parse(self.state.started_at)

    @property
    def finished(self) -> datetime | None:
        ends = [s.result.completed_at for s in self.steps if s.result.completed_at]
        return _parse(self.state.finished_at) or (max(ends) if ends else None)

    @property
    def duration_s(self) -> float | None:
        if self.started and self.finished:
            return max(0.0, (self.finished - self.started).total_seconds())
        return None

    @property
    def total_tokens(self) -> int:
        if self.state.usage.get("total_tokens") is not None:
            return int(self.state.usage["total_tokens"])
        return sum(int(s.result.usage.get("total_tokens", 0)) for s in self.steps)

    @property
    def cache_hit_rate(self) -> float | None:
        """Cached steps among the steps that produced an output (None when none did)."""
        done = [s for s in self.steps if s.result.status == "completed"]
        if not done:
            return None
        return sum(s.result.cached for s in done) / len(done)

    def counts(self) -> dict[str, int]:
        """Steps per state: completed (ran), cached, failed, skipped, interrupted; in a run in
        progress, running and pending (not recorded yet)."""
        counts: dict[str, int] = {}
        for view in self.steps:
            if view.change in NOT_RECORDED:
                state = view.change
            else:
                state = "cached" if view.result.cached else view.result.status
            counts[state] = counts.get(state, 0) + 1
        return counts

    def rate_limit_waits(self) -> tuple[int, float]:
        """How many times the run's requests waited for a rate limit, and for how long in all
        (waits of requests side by side add up)."""
        count, spent = 0, 0.0
        for view in self.steps:
            for tries in [view.result.tries, *(view.result.item_tries or [])]:
                for attempt in tries:
                    for wait in attempt.get("waits") or []:
                        count += 1 + int(wait.get("more", 0))
                        began = _parse(wait.get("started_at"))
                        ended = _parse(wait.get("finished_at"))
                        if began and ended:
                            spent += max(0.0, (ended - began).total_seconds())
        return count, spent

    def changes(self) -> dict[str, int]:
        """Steps per change against the previous run (replayed, ran again, ...)."""
        counts: dict[str, int] = {}
        for view in self.steps:
            counts[view.change] = counts.get(view.change, 0) + 1
        return counts


def load_report(run_id: str, storage: Storage | None = None) -> RunReport:
    """The report of run `run_id`, compared with the previous run of the same pipeline.

    Raises:
        RunNotFound: no run has this id.
    """
    own = storage is None
    storage = storage or Storage()
    try:
        state = storage.load_run_state(run_id)
        gone = state.status == "running" and not storage.is_driven(state.run_id)
        previous_id = storage.previous_run(state.run_id, state.pipeline_name, state.started_at)
        previous = storage.load_run_state(previous_id) if previous_id else None
    finally:
        if own:
            storage.close()
    if gone:  # marked running, but no process drives it: killed before it could record its end
        state.status = "interrupted"
    report = build_report(state, previous)
    if gone:
        report.notes.append(
            "the process running this run is gone (killed before it could record its end): "
            f"shown as interrupted; `stepchain resume {state.run_id}` runs the rest"
        )
    return report


def build_report(state: RunState, previous: RunState | None = None) -> RunReport:
    notes: list[str] = []
    specs: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    try:
        pipeline = state.plan
        specs = {s.id: (s.kind, dict(s.spec), sorted(s.needs)) for s in pipeline.steps}
    except StepChainError as exc:  # written for a StepChain that read it differently
        problems = getattr(exc, "problems", None)
        first = problems[0].format() if problems else exc.message.splitlines()[0]
        notes.append(
            f"the recorded pipeline no longer loads ({first}); steps are shown without "
            "their dependencies"
        )
    recorded = {r.step_id: r for r in state.results}
    # the pipeline's steps (those of a run in progress too), then any recorded beyond them
    order = [*specs, *(sid for sid in recorded if sid not in specs)]
    layers = _layers({sid: specs[sid][2] if sid in specs else [] for sid in order})
    layer_of = {sid: i for i, layer in enumerate(layers) for sid in layer}
    limit = _output_limit(len(order))
    before = {r.step_id: r for r in previous.results} if previous else {}
    views = []
    for sid in order:
        kind, spec, needs = specs.get(sid, ("unknown", {}, []))
        change, since = "", None
        if sid in recorded:
            result = recorded[sid]
            change = _change(result, before.get(sid), previous)
            if not _readable(result):
                notes.append(
                    f"the attempts of step {sid} in the run record are unreadable; the step is "
                    "drawn without them"
                )
                result.tries, result.item_tries = [], None
        elif state.status == "running" and all(
            n in recorded and recorded[n].status == "completed" for n in needs
        ):
            ends = [e for e in (recorded[n].completed_at for n in needs) if e is not None]
            since = max(ends) if ends else _parse(state.started_at)
            change = "running"
            why = "running or waiting for a slot: a step is recorded when it finishes"
            result = StepResult(sid, "skipped", reason=why)
        else:
            change = "pending"
            result = StepResult(sid, "skipped", reason="not recorded yet")
        views.append(
            StepView(
                result=result,
                kind=kind,
                needs=needs,
                layer=layer_of.get(sid, 0),
                definition=_definition(spec, limit),
                request=None if result.request is None else as_text(result.request, limit),
                output=None if result.output is None else as_text(result.output, limit),
                items=_item_count(result, spec),
                change=change,
                since=since,
            )
        )
    return RunReport(state, views, layers, previous.run_id if previous else None, notes)


def as_text(value: Any, limit: int = OUTPUT_LIMIT) -> Text:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
    return Text(text[:limit], len(text))


def _definition(spec: dict[str, Any], limit: int) -> Text | None:
    fields = {k: v for k, v in spec.items() if k != "id"}
    return as_text(fields, limit) if fields else None


def _readable(result: StepResult) -> bool:
    """Whether the step's tries (and its items') are as this StepChain records them."""
    if result.item_tries is not None and not isinstance(result.item_tries, list):
        return False
    return all(_readable_tries(tries) for tries in [result.tries, *(result.item_tries or [])])


def _readable_tries(tries: Any) -> bool:
    if not isinstance(tries, list):
        return False
    for attempt in tries:
        if not isinstance(attempt, dict) or not _times(attempt):
            return False
        if attempt.get("status", "completed") not in ("completed", "failed"):
            return False
        if not isinstance(attempt.get("wait_s", 0), int | float):
            return False
        waits = attempt.get("waits") or []
        if not isinstance(waits, list) or not all(
            isinstance(w, dict) and _times(w) and isinstance(w.get("more", 0), int) for w in waits
        ):
            return False
    return True


def _times(entry: dict[str, Any]) -> bool:
    try:
        datetime.fromisoformat(entry["started_at"])
        datetime.fromisoformat(entry["finished_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _item_count(result: StepResult, spec: dict[str, Any]) -> int | None:
    """A foreach step's items: those it tried (a failed step's output may miss some)."""
    if result.item_tries is not None:
        return len(result.item_tries)
    if spec.get("foreach") and isinstance(result.output, list):
        return len(result.output)
    return None


def _output_limit(steps: int) -> int:
    return max(MIN_OUTPUT_LIMIT, min(OUTPUT_LIMIT, REPORT_BUDGET // max(2 * steps, 1)))


def _change(result: StepResult, before: StepResult | None, previous: RunState | None) -> str:
    """What this step did compared with the previous run of the pipeline."""
    if result.status != "completed":
        return result.status
    if previous is None:
        return "replayed" if result.cached else "ran"
    how = "replayed" if result.cached else "ran again"
    if before is None:
        return f"{how} (new step)"
    if before.cache_key and result.cache_key and before.cache_key != result.cache_key:
        return f"{how} (request changed)"
    return how


def _layers(deps: dict[str, list[str]]) -> list[list[str]]:
    from stepchain.pipeline.graph import layers

    known = {sid: [n for n in needs if n in deps] for sid, needs in deps.items()}
    try:
        return layers(known)
    except ValueError:  # a cycle: never in a recorded run, but a report must still draw
        return [list(deps)]


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def seconds(value: float | None) -> str:
    """A duration for people: 0.42s, 3m 5s."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s"
    minutes, rest = divmod(value, 60)
    return f"{int(minutes)}m {rest:.0f}s"
