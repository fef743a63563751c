"""Every step's lifecycle on the `stepchain` logger, with fields a log shipper can index.

Records carry `run_id`, `step_id`, `kind`, `attempt`, `duration`, `cached` and `tokens` as
attributes (`logging.Formatter("%(step_id)s")`, or `--log-format json`). Starts and finishes
are INFO, a failed step and a failed run are ERROR. Nothing is formatted unless a handler wants it.
"""

from __future__ import annotations

import logging

from stepchain.pipeline.definition import Step
from stepchain.run.results import RunResult, StepResult
from stepchain.settings import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)


def step_started(run_id: str, step: Step) -> None:
    if log.isEnabledFor(logging.INFO):
        fields = _fields(run_id, step, attempt=1)
        log.info("step %s started (%s)", step.id, step.kind, extra=fields)


def step_finished(run_id: str, step: Step, result: StepResult) -> None:
    failed = result.status in ("failed", "interrupted")
    level = logging.ERROR if result.status == "failed" else logging.INFO
    if not log.isEnabledFor(level):
        return
    tokens = result.usage.get("total_tokens", 0)
    fields = _fields(
        run_id,
        step,
        attempt=result.attempts,
        duration=result.duration_s,
        cached=result.cached,
        tokens=tokens,
        status=result.status,
    )
    if failed:
        log.log(level, "step %s %s: %s", step.id, result.status, result.error, extra=fields)
        return
    how = " from cache" if result.cached else ""
    took = f" in {result.duration_s:.2f}s" if result.duration_s is not None else ""
    reason = f" ({result.reason})" if result.reason else ""
    log.info("step %s %s%s%s%s", step.id, result.status, how, took, reason, extra=fields)


def run_finished(result: RunResult, duration: float) -> None:
    failed = [sid for sid, r in result.steps.items() if r.status == "failed"]
    fields = {
        "run_id": result.run_id,
        "status": result.status,
        "duration": round(duration, 6),
        "tokens": result.usage.get("total_tokens", 0),
    }
    if result.status == "failed":
        what = f"step(s) {', '.join(failed)} failed" if failed else result.error or "failed"
        log.error("run %s failed: %s", result.run_id, what, extra=fields)
    else:
        log.info("run %s %s", result.run_id, result.status, extra=fields)


def _fields(run_id: str, step: Step, **values: object) -> dict[str, object]:
    return {"run_id": run_id, "step_id": step.id, "kind": step.kind, **values}
