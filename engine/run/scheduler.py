"""The scheduler: starts each step the moment its dependencies finish, bounded by a semaphore.

Each finished step's record is committed before any of its dependents starts, so a killed run
loses at most the steps that were in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from stepchain.cache import ResultCache
from stepchain.cache.pending import PendingWrites
from stepchain.errors import (
    RateLimitTimeout,
    RetryableStepError,
    StepChainError,
    StepError,
    StepTimeout,
    error_kind,
)
from stepchain.llm.limiter import Budget, budget
from stepchain.llm.usage import add_usage
from stepchain.pipeline.definition import Step
from stepchain.run.context import Runtime, current_step
from stepchain.run.database import Storage
from stepchain.run.prepare import PreparedStep, prepare_step
from stepchain.run.results import RunResult, RunStatus, StepResult, now
from stepchain.run.step_log import step_finished, step_started
from stepchain.settings import LOGGER_NAME
from stepchain.steps import Outcome, kind_of
from stepchain.steps.template import template_outcome
from stepchain.templates import Vars
from stepchain.templates.render import render_value
from stepchain.templates.sandbox import RenderInterrupted

log = logging.getLogger(LOGGER_NAME)
MAX_SERVER_WAIT = 600.0  # seconds a Retry-After may hold a step that has no timeout
Observer = Callable[[str, str, StepResult | None], None]  # (event, step_id, result)
_T = TypeVar("_T")


class _Failed(Exception):
    """A step failure carrying how many attempts were made."""

    def __init__(self, error: BaseException, attempts: int, usage: dict | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.usage = usage or {}


class Scheduler:
    """Runs one pipeline once (or resumes it), recording as it goes."""

    def __init__(
        self,
        runtime: Runtime,
        storage: Storage,
        cache: ResultCache,
        previous: dict[str, StepResult],
        observer: Observer | None = None,
    ) -> None:
        self.rt = runtime
        self.pipeline = runtime.pipeline
        self.options = runtime.options
        self.storage = storage
        self.cache = cache
        self.previous = previous
        self.observe = observer or (lambda *_: None)
        # an observer's progress(step_id, done, total) hears a foreach step's items finish
        self.progress: Callable[[str, int, int], None] | None = getattr(observer, "progress", None)
        self.results: dict[str, StepResult] = {}
        self.visible: dict[str, dict[str, Any]] = Vars()  # what templates see as `steps`
        self.writes = PendingWrites(cache)  # new cache entries, written in batches
        self.slots = asyncio.Semaphore(max(1, self.options.max_concurrent))
        self.running: dict[asyncio.Task, str] = {}
        self.stop_reason: str | None = None  # set by --fail-fast or an interrupt
        self.interrupted = False
        self.spent: dict[str, int] = {}  # tokens spent by this run (cache hits cost nothing)

    # Template steps are pure and synchronous: when a concurrency slot is free they run inline,
    # all the ready ones of a tick together (one cache query for them), with no task each.
    # False runs them as tasks like every other kind (the tests compare both ways).
    inline_templates = True

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> RunResult:
        waiting = {s.id: set(s.needs) for s in self.pipeline.steps}
        dependents: dict[str, list[str]] = {s.id: [] for s in self.pipeline.steps}
        for step in self.pipeline.steps:
            for need in step.needs:
                dependents[need].append(step.id)
        ready = [s.id for s in self.pipeline.steps if not waiting[s.id]]
        try:
            while ready or self.running:
                finished = self._start_ready(ready)  # skipped and inline steps finish at once
                ready = []
                if finished or not self.running:  # do not block: what they release may start now
                    if finished:  # but let started tasks and signal handlers (interrupt) run
                        await asyncio.sleep(0)
                    done: set[asyncio.Task] | list[asyncio.Task] = [
                        task for task in self.running if task.done()
                    ]
                else:
                    done, _ = await asyncio.wait(
                        self.running,
                        timeout=self.writes.due_in(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                for task in done:
                    sid = self.running.pop(task)
                    self._finish(_result_of(task, sid))
                    finished.append(sid)
                for sid in finished:
                    for dep in dependents[sid]:
                        waiting[dep].discard(sid)
                        if not waiting[dep]:
                            ready.append(dep)
                self.storage.commit()  # durable before any dependent starts
                self.writes.flush()  # when due or full; the wait above wakes for it, mostly idle
        except BaseException:  # e.g. a record that could not be written: end what is in flight
            for task in self.running:
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)
            raise
        self._mark_not_started()
        self.storage.commit()
        self.writes.flush(force=True)
        return self._result()

    def _start_ready(self, ready: list[str]) -> list[str]:
        """Start the ready steps; returns those that finished at once (skipped, or inline)."""
        finished: list[str] = []
        inline: list[Step] = []
        for sid in ready:
            step = self.pipeline.step(sid)
            blocker = self._blocker(step)
            if blocker or self.stop_reason:
                self._finish(StepResult(sid, "skipped", reason=blocker or self.stop_reason))
                finished.append(sid)
            elif step.kind == "template" and self.inline_templates and not self.slots.locked():
                inline.append(step)
            else:
                self.observe("start", sid, None)
                step_started(self.rt.run_id, step)
                self.running[asyncio.create_task(self._run_step(step), name=f"step:{sid}")] = sid
        if inline:
            self._run_templates(inline)
            finished += [step.id for step in inline]
        return finished

    def _blocker(self, step: Step) -> str | None:
        results = self.results
        if all(results[need].status == "completed" for need in step.needs):
            return None  # the usual case, without sorting the needs
        for need in sorted(step.needs, key=lambda n: self.pipeline.step(n).index):
            result = self.results[need]
            upstream = self.pipeline.step(need)
            if result.status == "failed" and not upstream.continue_on_error:
                return f"steps.{need} failed"
            if result.status == "interrupted":
                return f"steps.{need} was interrupted"
            if (
                result.status == "skipped"
                and result.reason
                and not result.reason.startswith("when")
            ):
                return f"steps.{need} was skipped ({result.reason})"
        return None

    def _finish(self, result: StepResult) -> None:
        self.results[result.step_id] = result
        self.visible[result.step_id] = {"output": result.output, "status": result.status}
        step = self.pipeline.step(result.step_id)
        self.storage.save_step(self.rt.run_id, step.index, result)
        step_finished(self.rt.run_id, step, result)
        if result.status == "failed" and not step.continue_on_error and self.options.fail_fast:
            self.stop_reason = (
                self.stop_reason or f"not started: --fail-fast after steps.{step.id} failed"
            )
        self.observe("finish", result.step_id, result)

    def _mark_not_started(self) -> None:
        reason = self.stop_reason or "not started"
        for step in self.pipeline.steps:
            if step.id not in self.results:
                self._finish(StepResult(step.id, "skipped", reason=reason))

    def interrupt(self) -> None:
        """SIGINT/SIGTERM: start nothing new, cancel what is in flight (recorded as interrupted)."""
        if self.interrupted:
            return
        self.interrupted = True
        self.stop_reason = "not started: run interrupted"
        for task in self.running:
            task.cancel()

    # -- one step -------------------------------------------------------------------------
    async def _run_step(self, step: Step) -> StepResult:
        current_step.set(step.id)  # this task's own context: seen by what the step calls
        result = StepResult(step.id, "completed", started_at=now())
        try:
            prepared = prepare_step(step, self._context(), self.rt)
            if not self._decided(prepared, result):
                await self._execute(prepared, result)
        except (asyncio.CancelledError, RenderInterrupted):
            _interrupted(result)
        except _Failed as failed:
            result.status, result.attempts, result.usage = "failed", failed.attempts, failed.usage
            result.error = self.rt.describe_error(failed.error)
            result.error_kind = error_kind(failed.error)
        except StepChainError as exc:
            result.status, result.error = "failed", self.rt.describe_error(exc)
            result.error_kind = error_kind(exc)
        except Exception as exc:  # a bug in StepChain or a tool: record it, and log the traceback
            log.exception("unexpected error in step %s", step.id)
            result.status, result.error = "failed", self.rt.describe_error(exc)
            result.error_kind = error_kind(exc)
        result.completed_at = now()
        result.output = self.rt.mask(result.output)
        return result

    def _context(self) -> dict[str, Any]:
        # Shared, not copied per step (that would be quadratic): templates cannot mutate it in
        # the immutable sandbox, and a step renders before anything else can finish.
        return {**self.rt.base_context(), "steps": self.visible}

    def _decided(self, prepared: PreparedStep, result: StepResult) -> bool:
        """Settle a step that needs no execution: skipped by `when`, or reused on resume."""
        step = prepared.step
        if prepared.skip_reason is not None:
            result.status, result.reason = "skipped", prepared.skip_reason
            return True
        result.cache_key = prepared.cache_key
        result.request = self._recorded_request(prepared)
        previous = self.previous.get(step.id)
        if (
            previous is not None
            and previous.cache_key == prepared.cache_key
            and step.id not in self.options.refresh
        ):  # resume: the completed result of the same request, whatever the cache holds
            result.output, result.usage, result.cached = previous.output, previous.usage, True
            return True
        return False

    def _recorded_request(self, prepared: PreparedStep) -> Any:
        """What the run record keeps of a step's requests (a template's is its output)."""
        if prepared.step.kind == "template":
            return None
        requests = self.rt.mask(prepared.requests)
        return requests if prepared.step.foreach is not None else requests[0]

    async def _execute(self, prepared: PreparedStep, result: StepResult) -> None:
        """Each request from the cache or executed; a foreach step's items side by side."""
        step = prepared.step
        # a template step's one try is its rendering; a foreach item's tries are its own
        # (result.item_tries, one list per item, empty for an item from the cache)
        per_item: list[list[dict[str, Any]] | None]
        if step.kind == "template":
            per_item = [None] * len(prepared.requests)
        elif step.foreach is None:
            per_item = [result.tries]
        else:
            result.item_tries = [[] for _ in prepared.requests]
            per_item = list(result.item_tries)
        runs = [
            self._cached_or_executed(step, request, key, tries)
            for request, key, tries in zip(prepared.requests, prepared.keys, per_item, strict=True)
        ]
        if step.foreach is None:
            self._collect(prepared, result, [await runs[0]])
            return
        if self.progress is not None:
            runs = _counted(self.progress, step.id, runs)
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        failures = [(i, o) for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
        for _, error in failures:
            if isinstance(error, asyncio.CancelledError):
                raise error
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        self._collect(prepared, result, done)
        if failures:
            result.attempts = max(
                [result.attempts] + [getattr(e, "attempts", 1) for _, e in failures]
            )
            index, error = failures[0]
            inner = error.error if isinstance(error, _Failed) else error
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise _Failed(
                StepError(
                    f"item {index}: {self.rt.describe_error(inner)}{more}", kind=error_kind(inner)
                ),
                result.attempts,
                result.usage,
            )

    @staticmethod
    def _collect(
        prepared: PreparedStep, result: StepResult, done: list[tuple[Outcome, int, bool]]
    ) -> None:
        """The step's output, usage, attempts and cached flag from its requests' outcomes."""
        result.attempts = max((attempts for _, attempts, _ in done), default=0)
        for outcome, _, _ in done:
            add_usage(result.usage, outcome.usage)
        result.output = prepared.output_of([outcome.output for outcome, _, _ in done])
        result.cached = all(cached for _, _, cached in done)

    async def _cached_or_executed(
        self, step: Step, request: dict, key: str, tries: list[dict[str, Any]] | None = None
    ) -> tuple[Outcome, int, bool]:
        if self._use_cache(step):
            entry = self.writes.get(key)
            if entry is not None:
                return Outcome(entry["output"], entry.get("usage") or {}), 0, True
        outcome, attempts = await self._attempts(step, request, tries)
        cacheable = step.cache
        if cacheable and step.cache_by_server:  # no policy written down: the servers' word
            cacheable = await self.rt.replay_safe(step, request)
        self._executed(step, key, outcome, cacheable)
        return outcome, attempts, False

    def _waiting(
        self, step_id: str, limiter: str | None, waits: list[dict[str, Any]] | None = None
    ) -> None:
        """A request of the step waits for a rate limit (or stopped): tell the observer, and
        note the wait in the attempt's `waits` for the run record."""
        self.observe("waiting" if limiter else "resumed", step_id, None)
        if waits is not None:
            _note_wait(waits, limiter)

    def _use_cache(self, step: Step) -> bool:
        return step.cache and not self.options.no_cache and step.id not in self.options.refresh

    def _executed(self, step: Step, key: str, outcome: Outcome, cacheable: bool = True) -> None:
        add_usage(self.spent, outcome.usage)
        if step.cache and cacheable:
            # written in a batch soon (see PendingWrites); a crash before then only costs a
            # recomputation
            self.writes.add(key, self.rt.mask(outcome.output), outcome.usage, step.cache_ttl)

    async def _attempts(
        self, step: Step, request: dict, tries: list[dict[str, Any]] | None = None
    ) -> tuple[Outcome, int]:
        """Execute a request, retrying retryable errors; each try is appended to `tries`."""
        kind = kind_of(step.kind)
        feedback: str | None = None
        attempt = 0
        spent: dict[str, int] = {}  # tokens of failed attempts count too (a schema retry costs)
        began = now()
        while True:
            attempt += 1
            waits: list[dict[str, Any]] = []  # this attempt's waits for a rate limit
            # the attempt's deadline, which waits for an LLM rate limit may not pass
            allowance = Budget(
                None, step.timeout, notify=partial(self._waiting, step.id, waits=waits)
            )
            try:
                async with self.slots:
                    began = now()
                    self.observe("attempt", step.id, None)
                    if step.timeout is not None:
                        allowance.deadline = asyncio.get_running_loop().time() + step.timeout
                    token = budget.set(allowance)
                    try:
                        coro = kind.execute(step, request, self.rt, feedback)
                        outcome = await asyncio.wait_for(coro, step.timeout)
                    finally:
                        budget.reset(token)
                if spent:
                    outcome.usage = add_usage(dict(outcome.usage), spent)
                _record_try(tries, began, "completed", waits=waits)
                return outcome, attempt
            except TimeoutError:
                if allowance.waiting is not None:  # the timeout struck while waiting for a limit
                    add_usage(self.spent, spent)
                    late = RateLimitTimeout(
                        f"rate limited: timed out after {step.timeout:g}s waiting for the rate "
                        f"limit of {allowance.waiting}",
                        "raise the step's timeout:, lower --max-concurrent, or declare the "
                        "account's limits (limits: {MODEL: {rpm: N, tpm: N}})",
                    )
                    _record_try(tries, began, "failed", self.rt.describe_error(late), waits=waits)
                    raise _Failed(late, attempt, spent) from None
                error: RetryableStepError = StepTimeout(f"timed out after {step.timeout:g}s")
            except RetryableStepError as exc:
                error = exc
            except StepError as exc:
                add_usage(spent, getattr(exc, "usage", None))
                add_usage(self.spent, spent)
                _record_try(tries, began, "failed", self.rt.describe_error(exc), waits=waits)
                raise _Failed(exc, attempt, spent) from None
            add_usage(spent, getattr(error, "usage", None))
            message = self.rt.describe_error(error)
            if attempt > step.retries:
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                add_usage(self.spent, spent)
                _record_try(tries, began, "failed", message, waits=waits)
                raise _Failed(StepError(f"{error}{suffix}", kind=error.kind), attempt, spent)
            feedback = getattr(error, "feedback", None)
            delay = (
                # a server's Retry-After never holds a step past its timeout
                min(error.retry_after, step.timeout or MAX_SERVER_WAIT)
                if error.retry_after is not None
                else (step.backoff.delay(attempt) * random.uniform(0.5, 1.0))
            )
            wait = "retry-after" if error.retry_after is not None else "backoff"
            _record_try(
                tries, began, "failed", message, waits=waits, wait=wait, wait_s=round(delay, 3)
            )
            log.info(
                "step %s attempt %d failed (%s); retrying in %.2fs",
                step.id,
                attempt,
                message,
                delay,
            )
            await asyncio.sleep(delay)

    # -- template steps inline ------------------------------------------------------------
    def _run_templates(self, steps: list[Step]) -> None:
        """Run ready template steps at once, as `_run_step` would, looking their keys up together."""
        pending: list[tuple[PreparedStep, StepResult]] = []
        for step in steps:
            result = StepResult(step.id, "completed", started_at=now())
            self.observe("start", step.id, None)
            step_started(self.rt.run_id, step)
            prepared = self._guarded(
                step, result, partial(prepare_step, step, self._context(), self.rt)
            )
            if prepared is None or self._decided(prepared, result):
                self._complete(result)
            else:
                pending.append((prepared, result))
        keys = [key for p, _ in pending if self._use_cache(p.step) for key in p.keys]
        hits = self.writes.lookup_many(keys) if keys else {}
        for prepared, result in pending:
            self._guarded(
                prepared.step, result, partial(self._templates_done, prepared, result, hits)
            )
            self._complete(result)

    def _guarded(self, step: Step, result: StepResult, func: Callable[[], Any]) -> Any:
        """`func()`, a failure recorded on `result` as `_run_step` records it."""
        try:
            return func()
        except RenderInterrupted:  # a signal came while the step's templates rendered
            _interrupted(result)
        except StepChainError as exc:
            result.status, result.error = "failed", self.rt.describe_error(exc)
            result.error_kind = error_kind(exc)
        except Exception as exc:  # a bug in StepChain: record it, and log the traceback
            log.exception("unexpected error in step %s", step.id)
            result.status, result.error = "failed", self.rt.describe_error(exc)
            result.error_kind = error_kind(exc)
        return None

    def _templates_done(
        self, prepared: PreparedStep, result: StepResult, hits: dict[str, dict[str, Any]]
    ) -> None:
        step = prepared.step
        use_cache = self._use_cache(step)
        done: list[tuple[Outcome, int, bool]] = []
        for request, key in zip(prepared.requests, prepared.keys, strict=True):
            entry = hits.get(key) if use_cache else None
            if entry is not None:
                done.append((Outcome(entry["output"], entry.get("usage") or {}), 0, True))
                continue
            self.observe("attempt", step.id, None)
            outcome = template_outcome(request)
            self._executed(step, key, outcome)
            done.append((outcome, 1, False))
        self._collect(prepared, result, done)

    def _complete(self, result: StepResult) -> None:
        result.completed_at = now()
        result.output = self.rt.mask(result.output)
        self._finish(result)

    # -- the end --------------------------------------------------------------------------
    def _result(self) -> RunResult:
        ordered = {s.id: self.results[s.id] for s in self.pipeline.steps}
        outputs = self._outputs()  # first: a signal while they render makes the run interrupted
        status: RunStatus
        if self.interrupted or any(r.status == "interrupted" for r in ordered.values()):
            status = "interrupted"
        elif any(
            r.status in ("failed", "interrupted") and not self.pipeline.step(sid).continue_on_error
            for sid, r in ordered.items()
        ):
            status = "failed"
        else:
            status = "completed"
        return RunResult(self.rt.run_id, status, ordered, outputs, dict(self.spent))

    def _outputs(self) -> dict[str, Any]:
        context = {**self.rt.base_context(), "steps": self.visible}
        outputs = {}
        for name, template in self.pipeline.outputs.items():
            try:
                outputs[name] = render_value(template, context, ("outputs", name), self.rt.locate)
            except StepChainError as exc:
                log.warning("output %s not rendered: %s", name, exc)
                outputs[name] = None
            except RenderInterrupted:  # a signal as the run ends: it ends interrupted
                self.interrupted, outputs[name] = True, None
        return self.rt.mask(outputs)


MAX_WAITS = 20  # waits for a rate limit recorded per try; later ones are only counted


def _note_wait(waits: list[dict[str, Any]], limiter: str | None) -> None:
    """A wait for limiter `limiter` begins (a name) or the current one ends (None)."""
    if limiter is not None:
        if len(waits) < MAX_WAITS:
            waits.append({"started_at": now().isoformat(), "limiter": limiter})
        elif waits:
            waits[-1]["more"] = waits[-1].get("more", 0) + 1
    elif waits and "finished_at" not in waits[-1]:
        waits[-1]["finished_at"] = now().isoformat()


def _result_of(task: asyncio.Task, step_id: str) -> StepResult:
    """A step task's result; a task cancelled before it began (an interrupt in the tick that
    started it) never ran `_run_step`, which would have recorded it as interrupted."""
    if task.cancelled():
        result = StepResult(step_id, "interrupted", started_at=now())
        _interrupted(result)
        result.completed_at = result.started_at
        return result
    return task.result()


def _interrupted(result: StepResult) -> None:
    result.status, result.reason = "interrupted", "run interrupted while the step was running"
    result.error, result.error_kind = "interrupted", "interrupted"


def _record_try(
    tries: list[dict[str, Any]] | None,
    began: datetime,
    status: str,
    error: str | None = None,
    waits: list[dict[str, Any]] | None = None,
    **wait: Any,
) -> None:
    """One try of a request for the run record: when it ran, how it ended, the waits for a
    rate limit within it (`waits`), and the wait for a retry after it (`wait`, `wait_s`)."""
    if tries is not None:
        entry: dict[str, Any] = {
            "started_at": began.isoformat(),
            "finished_at": now().isoformat(),
            "status": status,
        }
        if error:
            entry["error"] = error
        if waits:
            end = entry["finished_at"]
            entry["waits"] = [{**w, "finished_at": w.get("finished_at", end)} for w in waits]
        tries.append({**entry, **wait})


def _counted(
    progress: Callable[[str, int, int], None],
    step_id: str,
    runs: list[Coroutine[Any, Any, _T]],
) -> list[Coroutine[Any, Any, _T]]:
    """A foreach step's item runs, each telling `progress` when it is done."""
    total, done = len(runs), 0
    progress(step_id, 0, total)

    async def counted(run: Coroutine[Any, Any, _T]) -> _T:
        nonlocal done
        try:
            return await run
        finally:
            done += 1
            progress(step_id, done, total)

    return [counted(run) for run in runs]
