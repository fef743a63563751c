"""`run` steps: a command (argv list, or a string for the shell); stdout is the output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

from stepchain.errors import StepError
from stepchain.pipeline.definition import Step
from stepchain.steps.base import Outcome, RunServices
from stepchain.templates.render import render_shell, render_value

STDERR_TAIL = 2000


def render_request(step: Step, context: dict[str, Any], run: RunServices) -> dict[str, Any]:
    command = step.get("run")
    path = run.path_of(step, "run")
    if isinstance(command, str):
        request: dict[str, Any] = {"shell": render_shell(command, context, path, run.locate)}
    else:
        argv = render_value(command, context, path, run.locate)
        request = {"argv": [a if isinstance(a, str) else _json(a) for a in argv]}
    if step.get("env"):  # in the request (and its cache key) with secrets masked
        request["env"] = run.mask(_environment(step, run))
    return request


def _environment(step: Step, run: RunServices) -> dict[str, str]:
    """The step's `env:`, rendered from values fixed for the run (inputs, env, secrets)."""
    rendered = render_value(
        step.get("env"), run.base_context(), run.path_of(step, "env"), run.locate
    )
    return {
        name: value if isinstance(value, str) else _json(value) for name, value in rendered.items()
    }


async def execute(
    step: Step, request: dict[str, Any], run: RunServices, feedback: str | None = None
) -> Outcome:
    cwd = str(run.pipeline.base_dir)
    if "env" in request:  # the real values, secrets included, only for the command itself
        request = {**request, "env": _environment(step, run)}
    try:
        returncode, stdout, stderr = await run.run_command(request, cwd)
    except (FileNotFoundError, PermissionError) as exc:
        raise StepError(
            f"cannot start command: {exc}", "check the program name and PATH", kind="command"
        ) from None
    text = stdout.decode("utf-8", errors="replace")
    if returncode != 0:
        tail = stderr.decode("utf-8", errors="replace")[-STDERR_TAIL:].strip()
        raise StepError(
            f"command exited with status {returncode}" + (f": {tail}" if tail else ""),
            kind="command",
        )
    return Outcome(text)


async def run_locally(request: dict[str, Any], cwd: str) -> tuple[int, bytes, bytes]:
    """Run the command in a subprocess here; its exit status, stdout and stderr."""
    kwargs: dict[str, Any] = {
        "stdout": asyncio.subprocess.PIPE,
        "stderr": asyncio.subprocess.PIPE,
        "stdin": asyncio.subprocess.DEVNULL,
        "cwd": cwd,
        "start_new_session": True,  # its own process group, so a timeout kills the whole tree
    }
    if request.get("env"):
        kwargs["env"] = {**os.environ, **request["env"]}
    if "shell" in request:
        proc = await asyncio.create_subprocess_shell(request["shell"], **kwargs)
    else:
        proc = await asyncio.create_subprocess_exec(*request["argv"], **kwargs)
    try:
        stdout, stderr = await proc.communicate()
    except BaseException:
        _kill_group(proc.pid)
        await proc.wait()
        raise
    return proc.returncode or 0, stdout, stderr


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
