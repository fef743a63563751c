"""The one error tree: every error knows its exit code and says what to do next."""

from __future__ import annotations

from dataclasses import dataclass


class StepChainError(Exception):
    """Base of every error StepChain raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


# Hints name the Python API's arguments; the command line shows each as its flag instead.
CLI_FLAGS = {"approve=True": "--approve", "allow_run=True": "--allow-run"}


def for_command_line(text: str) -> str:
    """A message or hint as the command line says it: `--approve`, not `approve=True`."""
    for argument, flag in CLI_FLAGS.items():
        text = text.replace(argument, flag)
    return text


class UsageError(StepChainError):
    """Bad command-line usage: a missing file, a malformed -i flag."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One validation problem, pointing at a place in a file."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def format(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


class PipelineInvalid(StepChainError):
    """A pipeline file that does not validate; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        lines = "\n".join(p.format() for p in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) in the pipeline:\n{lines}",
            "fix the lines above, then check with `stepchain validate FILE`",
        )


class InputError(StepChainError):
    """Run inputs that are missing or do not match their declared schema."""

    exit_code = 2


class CredentialsMissing(StepChainError):
    """A pipeline needs an LLM but no credentials are configured."""

    exit_code = 2


class RunLocked(StepChainError):
    """Another process is driving the same run id."""


class RunNotFound(StepChainError):
    """No run record with the given id."""


class CommandsNotAllowed(StepChainError):
    """The pipeline has `run` steps and commands were not allowed."""

    exit_code = 2


class StepError(StepChainError):
    """A step failed. `retryable` says whether another attempt may succeed; `kind` says what
    failed (`StepResult.error_kind`): rate_limit, timeout, server, connection, auth, bad_request,
    not_found, malformed, too_large, schema, refused, tool, template, command, approval, step."""

    retryable = False
    kind = "step"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        retry_after: float | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after
        self.kind = kind or type(self).kind


class RetryableStepError(StepError):
    """A transient failure: rate limit, 5xx, timeout, connection, schema mismatch."""

    retryable = True
    kind = "transient"


class StepTimeout(RetryableStepError):
    """A step ran past its timeout."""

    kind = "timeout"


class RateLimited(RetryableStepError):
    """The LLM server answered 429 more often than the client resends without a deadline."""

    kind = "rate_limit"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint, retry_after=retry_after)
        self.headers = headers or {}


class RateLimitTimeout(StepError):
    """Waiting for an LLM rate limit would pass the step's timeout."""

    kind = "rate_limit"


class Interrupted(StepChainError):
    """The run was stopped by SIGINT or SIGTERM."""

    exit_code = 130


class LockError(StepChainError):
    """A lock file that cannot be used: unreadable, of a newer format, or for another file."""

    exit_code = 2


class LockOutdated(StepChainError):
    """`lock --check`: the pipeline's requests no longer match its lock."""


class BundleError(StepChainError):
    """A bundle that cannot be imported (nothing was written) or exported."""


class OfflineRefused(StepChainError):
    """An offline run whose steps are not all in the cache."""

    exit_code = 2


def no_running_loop(name: str, instead: str) -> None:
    """Refuse a sync entry point inside a running event loop, before any coroutine exists.

    Raises:
        StepChainError: naming the async function to await instead.
    """
    import asyncio  # only here: `stepchain validate` need not import it

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise StepChainError(
        f"{name}() cannot be called inside a running event loop (e.g. in an async def)",
        f"use `await {instead}(...)` there",
    )


def error_kind(exc: BaseException) -> str:
    """What kind of failure `exc` is, from its class (never from its message)."""
    if isinstance(exc, StepError):
        return exc.kind
    if isinstance(exc, CredentialsMissing):
        return "auth"
    if isinstance(exc, CommandsNotAllowed):
        return "not_allowed"
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, Interrupted):
        return "interrupted"
    if isinstance(exc, StepChainError):
        return "engine"
    return "internal"
