"""The public way to run a pipeline: Executor, execute(), resume_run()."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from stepchain.cache import ResultCache
from stepchain.errors import StepChainError, UsageError, no_running_loop
from stepchain.pipeline.definition import Pipeline
from stepchain.pipeline.inputs import resolve_inputs
from stepchain.pipeline.load import load_pipeline, load_pipeline_text, with_tools
from stepchain.run.context import RunOptions, Runtime, default_run_id
from stepchain.run.database import OutOfSpace, Storage
from stepchain.run.results import RunResult, StepResult
from stepchain.run.scheduler import Observer, Scheduler
from stepchain.run.step_log import run_finished
from stepchain.settings import LOGGER_NAME, Settings, current_settings
from stepchain.templates.sandbox import resume_renders, stop_renders

log = logging.getLogger(LOGGER_NAME)

if TYPE_CHECKING:
    from openai import DefaultAsyncHttpxClient


# Methods of StepChain 0.3's Executor that the engine no longer calls: overriding one would
# silently do nothing, so a subclass that does is refused when it is defined.
_NEVER_CALLED = ("execute_step", "run_step", "_execute_step")
# Optional methods of an observer besides its events (see Executor.run)
_OBSERVER_EXTRAS = ("watch_limits", "progress", "paused")


class Executor:
    """Runs pipelines. `max_concurrent` bounds steps and foreach items in flight.

    Per-step hook: `on_step(result)` is called with each step's `StepResult` as soon as the
    step finishes (completed, failed, skipped or interrupted) and its record is saved; pass
    `on_step=` or override the method in a subclass. An exception it raises is logged, and the
    run goes on.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _NEVER_CALLED:
            if name in vars(cls):
                raise StepChainError(
                    f"{cls.__name__}.{name} overrides a method StepChain never calls",
                    "override on_step(self, result), called after each step finishes, "
                    "or pass observer= to run()",
                )

    def __init__(
        self,
        max_concurrent: int = 8,
        *,
        settings: Settings | None = None,
        executor: Literal["local", "dask"] = "local",
        scheduler: str | None = None,
        on_step: Callable[[StepResult], None] | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise UsageError(
                f"max_concurrent must be at least 1, got {max_concurrent}",
                "pass max_concurrent=1 to run one step at a time",
            )
        self.max_concurrent = max_concurrent
        self.settings = settings
        self.executor = executor
        self.scheduler = scheduler
        self._on_step = on_step

    def on_step(self, result: StepResult) -> None:
        """Called with each step's result when the step finishes; does nothing by default."""
        if self._on_step is not None:
            self._on_step(result)

    def _observer(self, observer: Observer | None) -> Observer | None:
        """`observer` with `on_step` called on each finish (when it does something)."""
        if self._on_step is None and type(self).on_step is Executor.on_step:
            return observer

        def observe(event: str, step_id: str, result: StepResult | None) -> None:
            if observer is not None:
                observer(event, step_id, result)
            if event == "finish" and result is not None:
                try:
                    self.on_step(result)
                except Exception:
                    log.exception("the on_step hook failed on step %s", step_id)

        for name in _OBSERVER_EXTRAS:  # what the wrapped observer offers besides events
            if hasattr(observer, name):
                setattr(observe, name, getattr(observer, name))
        return observe

    def execute(
        self,
        pipeline: Pipeline | str | Path,
        run_id: str | None = None,
        inputs: dict[str, Any] | None = None,
        resume: bool = False,
        *,
        fail_fast: bool = False,
        no_cache: bool = False,
        refresh: Iterable[str] = (),
        allow_run: bool | None = None,
        approve: bool = False,
        tools: dict[str, Any] | list[Any] | None = None,
        http_client: DefaultAsyncHttpxClient | None = None,
    ) -> list[StepResult]:
        """Run (or resume) a pipeline; one StepResult per step, in pipeline order.

        Args:
            pipeline: a Pipeline from load_pipeline() or decompose(), or a file path.
            run_id: names the run so it can be resumed; default `<name>-<UTC time>-<4 hex>`.
            inputs: values for the pipeline's declared inputs.
            resume: reuse the completed steps of run `run_id` and run the rest.
            fail_fast: start nothing new after the first failure.
            no_cache: ignore cache hits (results are still stored).
            refresh: ids of steps to recompute whatever the cache holds.
            allow_run: allow `run` steps to start commands (None: STEPCHAIN_ALLOW_RUN decides).
            approve: approve MCP tools that have `require_approval: always`.
            tools: tools added to the pipeline's `tools:` (same names replaced): names mapped
                to Python callables (function tools, run as given, no consent needed) or tool
                definitions, or a StepChain 0.3 tool list. Pass them again on resume.
            http_client: the HTTP client for LLM calls (an `openai.DefaultAsyncHttpxClient`),
                e.g. with a proxy, client certificates or HTTP/2; StepChain does not close it.
                An async client belongs to one event loop: give each `execute()` call its own
                (or reuse one across `arun()` calls in your loop).

        Raises:
            StepChainError: the run could not start (see its message and hint), or this was
                called inside a running event loop (await `aexecute` or `arun` there).
        """
        no_running_loop("Executor.execute", "Executor.arun")
        return self.run(
            pipeline,
            run_id=run_id,
            inputs=inputs,
            resume=resume,
            fail_fast=fail_fast,
            no_cache=no_cache,
            refresh=refresh,
            allow_run=allow_run,
            approve=approve,
            tools=tools,
            http_client=http_client,
        ).results

    def options(
        self,
        *,
        run_id: str | None = None,
        inputs: dict[str, Any] | None = None,
        resume: bool = False,
        fail_fast: bool = False,
        no_cache: bool = False,
        refresh: Iterable[str] = (),
        allow_run: bool | None = None,
        approve: bool = False,
        http_client: DefaultAsyncHttpxClient | None = None,
        handle_signals: bool = False,
        offline: bool = False,
    ) -> RunOptions:
        """The RunOptions of a run by this executor (the arguments are those of `execute`)."""
        return RunOptions(
            run_id=run_id,
            inputs=dict(inputs or {}),
            resume=resume,
            max_concurrent=self.max_concurrent,
            fail_fast=fail_fast,
            no_cache=no_cache,
            refresh=frozenset(refresh),
            allow_run=allow_run,
            approve=approve,
            executor=self.executor,
            scheduler=self.scheduler,
            http_client=http_client,
            handle_signals=handle_signals,
            offline=offline,
        )

    def run(
        self,
        pipeline: Pipeline | str | Path,
        *,
        run_id: str | None = None,
        inputs: dict[str, Any] | None = None,
        resume: bool = False,
        fail_fast: bool = False,
        no_cache: bool = False,
        refresh: Iterable[str] = (),
        allow_run: bool | None = None,
        approve: bool = False,
        tools: dict[str, Any] | list[Any] | None = None,
        http_client: DefaultAsyncHttpxClient | None = None,
        observer: Observer | None = None,
        handle_signals: bool = False,
        offline: bool = False,
    ) -> RunResult:
        """Run a pipeline; the whole RunResult (what `stepchain run --json` prints).

        The arguments are those of `execute`; `observer(event, step_id, result)` hears each
        step start, attempt and finish, and `waiting`/`resumed` around a wait for a rate limit
        (an observer with a `watch_limits(summary)` method is handed a callable giving one line
        per model: requests and tokens per minute against its limits; one with
        `progress(step_id, done, total)` hears a foreach step's items finish; one with
        `paused(step_id)`, a context manager, is entered while a question is asked on the
        terminal); `handle_signals` turns SIGINT/SIGTERM into a clean stop;
        `offline` refuses to start when any step would call a model, a tool or a command.
        """
        no_running_loop("Executor.run", "Executor.arun")
        options = self.options(
            run_id=run_id,
            inputs=inputs,
            resume=resume,
            fail_fast=fail_fast,
            no_cache=no_cache,
            refresh=refresh,
            allow_run=allow_run,
            approve=approve,
            http_client=http_client,
            handle_signals=handle_signals,
            offline=offline,
        )
        if tools is not None:
            pipeline = with_tools(pipeline, tools)
        return asyncio.run(self.run_with(pipeline, options, observer))

    async def arun(
        self,
        pipeline: Pipeline | str | Path,
        *,
        run_id: str | None = None,
        inputs: dict[str, Any] | None = None,
        resume: bool = False,
        fail_fast: bool = False,
        no_cache: bool = False,
        refresh: Iterable[str] = (),
        allow_run: bool | None = None,
        approve: bool = False,
        tools: dict[str, Any] | list[Any] | None = None,
        http_client: DefaultAsyncHttpxClient | None = None,
        observer: Observer | None = None,
    ) -> RunResult:
        """`run` inside a running event loop (signals are left to the caller's loop)."""
        options = self.options(
            run_id=run_id,
            inputs=inputs,
            resume=resume,
            fail_fast=fail_fast,
            no_cache=no_cache,
            refresh=refresh,
            allow_run=allow_run,
            approve=approve,
            http_client=http_client,
        )
        if tools is not None:
            pipeline = with_tools(pipeline, tools)
        return await self.run_with(pipeline, options, observer)

    async def run_with(
        self, pipeline: Pipeline | str | Path, options: RunOptions, observer: Observer | None = None
    ) -> RunResult:
        """Run with options made by `options()`: what `run`, `arun` and the CLI share."""
        if not isinstance(pipeline, Pipeline):
            pipeline = load_pipeline(pipeline)
        settings = current_settings(self.settings)
        run_id = options.run_id or default_run_id(pipeline)
        cache = ResultCache(settings)
        storage = Storage(settings)
        try:
            with storage.lock(run_id):
                try:
                    return await self._drive(
                        pipeline,
                        options,
                        run_id,
                        storage,
                        cache,
                        settings,
                        self._observer(observer),
                    )
                except OutOfSpace as exc:
                    if storage.mark_failed(run_id, exc.message):
                        done, then = "stopped and is marked failed", f"`stepchain resume {run_id}`"
                    elif storage.exists(run_id):  # left `running`: listed as interrupted
                        done, then = "stopped", f"`stepchain resume {run_id}`"
                    else:
                        done, then = "was not recorded", "run it again"
                    raise OutOfSpace(
                        f"{exc.message}; run '{run_id}' {done}", f"free some space, then {then}"
                    ) from None
        finally:
            storage.close()
            cache.close()

    async def _drive(
        self,
        pipeline: Pipeline,
        options: RunOptions,
        run_id: str,
        storage: Storage,
        cache: ResultCache,
        settings: Settings,
        observer: Observer | None,
    ) -> RunResult:
        previous: dict[str, StepResult] = {}
        given = dict(options.inputs)
        if options.resume:
            state = storage.load_run_state(run_id)
            previous = {r.step_id: r for r in state.results if r.status == "completed"}
            given = {**state.inputs, **given}
        elif storage.exists(run_id):
            raise StepChainError(
                f"run '{run_id}' already exists",
                f"resume it with `stepchain resume {run_id}`, or choose another --run-id",
            )
        inputs = resolve_inputs(pipeline, given)
        runtime = Runtime(pipeline, settings, options, run_id, inputs)
        if options.executor != "local":  # local runs need not import the Dask backend
            from stepchain.run.dask_backend import open_backend

            # --executor dask: connect (and check the workers) before anything runs or is recorded
            runtime.backend = await open_backend(options.executor, options.scheduler, pipeline)
        try:
            if options.offline:
                self._check_offline(pipeline, options, inputs, settings, run_id)
            runtime.preflight()
            storage.begin_run(
                run_id,
                name=pipeline.name,
                path=str(pipeline.path.resolve()) if pipeline.path else None,
                text=pipeline.record_text or pipeline.text,
                text_hash=pipeline.hash,
                inputs=runtime.mask(inputs),
            )
            storage.commit()
            runtime.pause_display = getattr(observer, "paused", None)
            watch = getattr(observer, "watch_limits", None)
            if watch is not None and pipeline.has_llm_steps:  # e.g. the live table's rate line
                watch(runtime.limiters.summary)
            scheduler = Scheduler(runtime, storage, cache, previous, observer)
            started = time.monotonic()
            try:
                with _signals(scheduler, enabled=options.handle_signals):
                    result = await scheduler.run()
                run_finished(result, time.monotonic() - started)
            finally:
                await runtime.aclose()
        finally:
            if runtime.backend is not None:
                await runtime.backend.close()
        storage.finish_run(run_id, result.status, result.outputs, result.usage)
        return result

    @staticmethod
    def _check_offline(
        pipeline: Pipeline, options: RunOptions, inputs: dict, settings: Settings, run_id: str
    ) -> None:
        from stepchain.run.offline import check_offline

        if options.no_cache or options.refresh:
            raise UsageError(
                "--offline replays from the cache; --no-cache and --refresh would need calls",
                "drop --no-cache/--refresh, or run without --offline",
            )
        check_offline(pipeline, inputs, settings, run_id)


def execute(
    pipeline: Pipeline | str | Path,
    run_id: str | None = None,
    inputs: dict[str, Any] | None = None,
    resume: bool = False,
    max_concurrent: int = 8,
    *,
    fail_fast: bool = False,
    no_cache: bool = False,
    refresh: Iterable[str] = (),
    allow_run: bool | None = None,
    approve: bool = False,
    tools: dict[str, Any] | list[Any] | None = None,
    http_client: DefaultAsyncHttpxClient | None = None,
) -> list[StepResult]:
    """Run (or resume) a pipeline and return one StepResult per step.

    The arguments are those of `Executor(max_concurrent).execute(...)`.

    Raises:
        StepChainError: the run could not start (see its message and hint), or this was
            called inside a running event loop (await `aexecute` there).
    """
    no_running_loop("execute", "aexecute")
    return Executor(max_concurrent).execute(
        pipeline,
        run_id,
        inputs,
        resume,
        fail_fast=fail_fast,
        no_cache=no_cache,
        refresh=refresh,
        allow_run=allow_run,
        approve=approve,
        tools=tools,
        http_client=http_client,
    )


async def aexecute(
    pipeline: Pipeline | str | Path,
    run_id: str | None = None,
    inputs: dict[str, Any] | None = None,
    resume: bool = False,
    max_concurrent: int = 8,
    *,
    fail_fast: bool = False,
    no_cache: bool = False,
    refresh: Iterable[str] = (),
    allow_run: bool | None = None,
    approve: bool = False,
    tools: dict[str, Any] | list[Any] | None = None,
    http_client: DefaultAsyncHttpxClient | None = None,
) -> list[StepResult]:
    """`execute` for async code: await it inside a running event loop.

    Raises:
        StepChainError: the run could not start (see its message and hint).
    """
    result = await Executor(max_concurrent).arun(
        pipeline,
        run_id=run_id,
        inputs=inputs,
        resume=resume,
        fail_fast=fail_fast,
        no_cache=no_cache,
        refresh=refresh,
        allow_run=allow_run,
        approve=approve,
        tools=tools,
        http_client=http_client,
    )
    return result.results


def resume_run(
    run_id: str, executor: Executor | None = None, options: RunOptions | None = None
) -> RunResult:
    """Resume a recorded run from its file (or, if the file is gone, from the recorded text)."""
    no_running_loop("resume_run", "Executor.arun(..., resume=True)")
    executor = executor or Executor()
    pipeline = recorded_pipeline(run_id, executor.settings)
    options = options or executor.options()
    options.run_id, options.resume = run_id, True
    return asyncio.run(executor.run_with(pipeline, options))


def recorded_pipeline(run_id: str, settings: Settings | None = None) -> Pipeline:
    """The pipeline a run ran: its file as it is now, or the recorded text if the file is gone."""
    storage = Storage(current_settings(settings))
    try:
        state = storage.load_run_state(run_id)
    finally:
        storage.close()
    path = Path(state.pipeline_path) if state.pipeline_path else None
    if path and path.exists():
        return load_pipeline(path)
    return load_pipeline_text(
        state.pipeline_text, path.name if path else "<recorded>", path.parent if path else None
    )


@contextmanager
def _signals(scheduler: Scheduler, *, enabled: bool) -> Iterator[None]:
    """SIGINT/SIGTERM stop the run. The handler is Python's own, not the event loop's: it runs
    even while a template renders (synchronously, holding the loop), ends that render and any
    later one of this run, its outputs' too (stop_renders), and has the loop call
    `scheduler.interrupt` as soon as it is free."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()

    def stop(signum: int, frame: Any) -> None:
        stop_renders()
        loop.call_soon_threadsafe(scheduler.interrupt)

    resume_renders()
    try:
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are the caller's to handle
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        resume_renders()
