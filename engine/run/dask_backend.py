"""`--executor dask`: step bodies run on a Dask distributed cluster; the coordinator keeps the rest.

What runs where. On the workers: sync function tools (also those an LLM step calls) and `run`
commands. In the coordinating process: scheduling, retries, timeouts, the cache and the run record;
LLM calls (async HTTP, I/O bound, and the provider credentials stay in one process); `async def`
function tools; MCP calls (their connections live there); templates.

What the workers need. StepChain itself (`pip install 'stepchain[dask]'`, the same version), and
the pipeline's function tools: a worker imports a tool by module and name, after putting the
pipeline's folder first on its sys.path when that folder exists on the worker (the same machine, or
a shared filesystem at the same path); elsewhere install the tool modules in the workers'
environment. `run` commands run in the pipeline's folder, so it must exist on the workers. Both are
checked on the connected workers before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from stepchain.errors import RetryableStepError, StepChainError, UsageError
from stepchain.pipeline.definition import Pipeline
from stepchain.settings import LOGGER_NAME
from stepchain.steps.command import STDERR_TAIL
from stepchain.tools.functions import code_fingerprint

log = logging.getLogger(LOGGER_NAME)
CONNECT_TIMEOUT = 5.0  # seconds to reach the scheduler before the run fails
CANCEL_POLL = 0.1  # seconds between a worker's checks that a running command is still wanted
_HOW_TO_START = "start a scheduler with `dask scheduler` and workers with `dask worker {address}`"


class WorkerLost(RetryableStepError, ConnectionError):
    """The worker running a step died or became unreachable; another attempt may succeed.

    Also a ConnectionError, so a function tool's wrapper classifies it as retryable too.
    """


@dataclass(frozen=True)
class ToolRef:
    """A function named so a worker imports it, rather than unpickling a module it may not have."""

    folder: str
    module: str
    qualname: str
    fingerprint: str  # the coordinator's code version; a worker with other code must not run
    file: str | None  # where the coordinator imported it from; preferred where that path exists

    @property
    def label(self) -> str:
        return f"{self.module}:{self.qualname}"


async def open_backend(
    executor: str, scheduler: str | None, pipeline: Pipeline
) -> DaskBackend | None:
    """The backend for RunOptions.executor: None for 'local', a connected DaskBackend for 'dask'.

    Without a scheduler address, $STEPCHAIN_DASK_SCHEDULER gives it (as for `stepchain run`).
    """
    if executor == "local":
        return None
    if executor != "dask":
        raise UsageError(f"unknown executor '{executor}'", "use 'local' (the default) or 'dask'")
    return await DaskBackend.connect(
        scheduler or os.environ.get("STEPCHAIN_DASK_SCHEDULER"), pipeline
    )


class DaskBackend:
    """Submits blocking step work to a Dask cluster, one task per call (foreach items included)."""

    def __init__(self, client: Any, pipeline: Pipeline) -> None:
        self.client = client
        self.folder = str(pipeline.base_dir)
        self._refs: dict[int, tuple[Callable[..., Any], ToolRef | None]] = {}
        self._lost = _lost_worker_errors()

    @classmethod
    async def connect(
        cls, address: str | None, pipeline: Pipeline, timeout: float | None = None
    ) -> DaskBackend:
        """Connect to the scheduler and check the workers, before anything runs.

        Raises:
            StepChainError: distributed is not installed, no address was given, the scheduler
                cannot be reached within `timeout` seconds, or a worker cannot run the pipeline.
        """
        distributed = _import_distributed()
        if not address:
            raise UsageError(
                "--executor dask needs the address of a Dask scheduler",
                "pass --scheduler tcp://HOST:8786 (scheduler= from Python, or set "
                "STEPCHAIN_DASK_SCHEDULER); " + _HOW_TO_START.format(address="tcp://HOST:8786"),
            )
        timeout = CONNECT_TIMEOUT if timeout is None else timeout
        client = None
        try:
            client = distributed.Client(
                address, asynchronous=True, timeout=timeout, set_as_default=False
            )
            await client
        except Exception as exc:  # any failure to connect ends the run before it starts
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            raise StepChainError(
                f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc})",
                _HOW_TO_START.format(address=address)
                + ", or fix --scheduler / STEPCHAIN_DASK_SCHEDULER",
            ) from None
        backend = cls(client, pipeline)
        try:
            await backend._check_workers(pipeline)
        except BaseException:
            await backend.close()
            raise
        return backend

    async def _check_workers(self, pipeline: Pipeline) -> None:
        targets = sorted(
            {s.function for s in pipeline.tools.values() if s.type == "function" and s.function}
        )
        needs_folder = any(s.kind == "run" for s in pipeline.steps)
        try:
            reports = await self.client.run(probe_worker, self.folder, targets, needs_folder)
        except Exception as exc:
            raise StepChainError(
                f"the Dask workers cannot run StepChain tasks ({type(exc).__name__}: {exc})",
                "install StepChain on every worker, the same version: pip install 'stepchain[dask]'",
            ) from None
        if not reports:
            log.warning("the Dask scheduler has no workers yet; steps wait until one joins")
        problems = [
            f"{worker}: {problem}" for worker, found in sorted(reports.items()) for problem in found
        ]
        if problems:
            raise StepChainError(
                "the Dask workers cannot run this pipeline:\n  " + "\n  ".join(problems),
                f"function tools must be importable on every worker, and `run` steps need the "
                f"pipeline's folder: run the workers where {self.folder} exists at the same path, "
                "or install the tool modules in the workers' environment",
            )

    async def run(self, func: Callable[..., Any], /, **kwargs: Any) -> Any:
        """Run a blocking function on a worker and return its result (Runtime.offload's Dask path)."""
        ref = self._reference(func)
        if ref is None:  # a lambda or closure: cloudpickle ships the function itself
            return await self._submit(func, _label(func), kwargs)
        return await self._submit(call_by_name, ref.label, {"ref": ref, "kwargs": kwargs})

    async def run_command(self, request: dict[str, Any], cwd: str) -> tuple[int, bytes, bytes]:
        """Run a `run` step's command on a worker: (exit status, stdout, tail of stderr)."""
        program = request["argv"][0] if "argv" in request else "sh"
        return await self._submit(
            run_command, f"command {program}", {"request": request, "cwd": cwd}
        )

    async def close(self) -> None:
        await self.client.close()

    async def _submit(self, func: Callable[..., Any], label: str, kwargs: dict[str, Any]) -> Any:
        # pure=False: every attempt is a new task, so a retry really runs again
        future = self.client.submit(func, **kwargs, key=f"{label}-{uuid4().hex}", pure=False)
        try:
            return await future
        except asyncio.CancelledError:  # SIGINT or a timeout: stop the task on the cluster too
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.client.cancel([future], reason="stepchain: step cancelled")
                )
            raise
        except self._lost as exc:
            raise WorkerLost(
                f"the Dask worker running {label} was lost ({type(exc).__name__}: {exc})",
                "see the worker's log; a task that kills its worker (a crash, out of memory) is "
                "retried up to the step's `retries`",
            ) from None

    def _reference(self, func: Callable[..., Any]) -> ToolRef | None:
        known = self._refs.get(id(func))
        if known is None:
            known = self._refs[id(func)] = (func, _reference(func, self.folder))
        return known[1]


def _reference(func: Callable[..., Any], folder: str) -> ToolRef | None:
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        if _lookup(module, qualname) is not func:
            return None
    except Exception:
        return None
    return ToolRef(folder, module, qualname, code_fingerprint(func), _module_file(module))


def _label(func: Callable[..., Any]) -> str:
    return (
        f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', type(func).__name__)}"
    )


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise StepChainError(
            "--executor dask needs Dask distributed, which is not installed",
            "install it with: pip install 'stepchain[dask]'",
        ) from None
    return distributed


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the cluster lost the task, not that the step's code failed."""
    from distributed.client import FutureCancelledError  # cancelled by the cluster, not by us
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    return (KilledWorker, CommClosedError, FutureCancelledError)


# -- on the workers ----------------------------------------------------------------------------

# Per worker process: tools already imported, by name and code version (imports cost milliseconds).
_resolved: dict[ToolRef, Callable[..., Any]] = {}


def call_by_name(ref: ToolRef, kwargs: dict[str, Any]) -> Any:
    """On a worker: import the tool by name from the pipeline's folder, then call it."""
    func = _resolved.get(ref)
    if func is None:
        func = _resolved[ref] = _import_tool(ref)
    return func(**kwargs)


def _import_tool(ref: ToolRef) -> Callable[..., Any]:
    _put_first_on_path(ref.folder)
    func = _lookup(ref.module, ref.qualname)
    here = ref.file is not None and os.path.exists(ref.file)
    if code_fingerprint(func) != ref.fingerprint or (here and _module_file(ref.module) != ref.file):
        # A long-lived worker imported an older version, or a same-named module of another pipeline.
        _forget(ref.module)
        func = _lookup(ref.module, ref.qualname)
        if code_fingerprint(func) != ref.fingerprint:
            raise ImportError(
                f"{ref.label} on this worker is not the code the coordinator has "
                f"({getattr(sys.modules.get(ref.module), '__file__', '?')}); "
                "give the workers the same version of the tool"
            )
    return func


def probe_worker(folder: str, targets: list[str], needs_folder: bool) -> list[str]:
    """On each worker, before a run: what would stop it running the pipeline's steps."""
    problems = []
    if needs_folder and not os.path.isdir(folder):
        problems.append(f"the pipeline's folder {folder} does not exist (`run` steps run there)")
    _put_first_on_path(folder)
    for target in targets:
        module, _, attr = target.partition(":")
        try:
            _lookup(module, attr)
        except Exception as exc:
            problems.append(f"cannot import {target} ({type(exc).__name__}: {exc})")
    return problems


def run_command(request: dict[str, Any], cwd: str) -> tuple[int, bytes, bytes]:
    """On a worker: run a command as the local executor does; killed if the step is cancelled."""
    if not os.path.isdir(cwd):
        raise FileNotFoundError(2, "the pipeline's folder does not exist on this Dask worker", cwd)
    shell = "shell" in request
    proc = subprocess.Popen(
        request["shell"] if shell else request["argv"],
        shell=shell,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, **request["env"]} if request.get("env") else None,
        start_new_session=True,  # its own process group, so cancelling kills the whole tree
    )
    try:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=CANCEL_POLL)
                break
            except subprocess.TimeoutExpired:
                if _task_cancelled():
                    raise RuntimeError("command cancelled by the coordinator") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stdout, stderr[-4 * STDERR_TAIL :]


def _task_cancelled() -> bool:
    """Whether the scheduler cancelled the task this worker thread runs (timeout, SIGINT)."""
    from distributed import get_worker
    from distributed.worker import thread_state

    try:
        task = get_worker().state.tasks.get(thread_state.key)
    except (ValueError, AttributeError):  # not running inside a worker task
        return False
    return task is None or task.state in ("cancelled", "released", "forgotten")


def _put_first_on_path(folder: str) -> None:
    if os.path.isdir(folder) and (not sys.path or sys.path[0] != folder):
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def _lookup(module: str, qualname: str) -> Any:
    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


def _module_file(module: str) -> str | None:
    file = getattr(sys.modules.get(module), "__file__", None)
    return os.path.realpath(file) if file else None


def _forget(module: str) -> None:
    top = module.partition(".")[0]
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


__all__ = ["DaskBackend", "ToolRef", "WorkerLost", "open_backend"]
