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
    """A step failed. `retryable` says whether another attempt may succeed; `error_kind` is
    what a step's result records (`rate_limit`, or None)."""

    retryable = False
    error_kind: str | None = None

    def __init__(
        self, message: str, hint: str | None = None, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class RetryableStepError(StepError):
    """A transient failure: rate limit, 5xx, timeout, connection, schema mismatch."""

    retryable = True


class StepTimeout(RetryableStepError):
    """A step ran past its timeout."""


class RateLimited(RetryableStepError):
    """The LLM server answered 429 more often than the client resends without a deadline."""

    error_kind = "rate_limit"

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

    error_kind = "rate_limit"


class Interrupted(StepChainError):
    """The run was stopped by SIGINT or SIGTERM."""

    exit_code = 130
