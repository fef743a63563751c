"""Where StepChain keeps its state and how it logs: one settings object, passed around."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

LOGGER_NAME = "stepchain"
MAX_ANSWER_ENV = "STEPCHAIN_MAX_ANSWER_BYTES"
DEFAULT_MAX_ANSWER_BYTES = 32 * 2**20  # generous: a long model answer is well under 1 MiB
_SIZE = re.compile(r"(\d+)\s*(|b|kib|mib|gib|kb|mb|gb)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6}
_UNITS["gb"] = 10**9


@dataclass(frozen=True)
class Settings:
    """The state folder (cache, run records, locks), the log level, and the largest answer an
    LLM server may send (None: $STEPCHAIN_MAX_ANSWER_BYTES, else 32 MiB)."""

    home: Path
    log_level: str = "WARNING"
    max_answer_bytes: int | None = None

    @classmethod
    def from_env(cls, storage_path: str | Path | None = None) -> Settings:
        """storage_path, else $STEPCHAIN_HOME, else .stepchain/ in the working directory."""
        home = storage_path or os.environ.get("STEPCHAIN_HOME") or Path.cwd() / ".stepchain"
        return cls(home=Path(home).expanduser().resolve())

    @property
    def user_file(self) -> Path:
        """The user settings (providers, account limits): $STEPCHAIN_SETTINGS, else
        settings.yaml in the state folder."""
        named = os.environ.get("STEPCHAIN_SETTINGS")
        return Path(named).expanduser() if named else self.home / "settings.yaml"

    def ensure_home(self) -> Path:
        """Create the state folder, private to the user (0700)."""
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.home.chmod(0o700)
        except OSError as exc:
            from stepchain.errors import StepChainError

            raise StepChainError(
                f"cannot use {self.home} as the state folder: {exc.strerror or exc}",
                "set STEPCHAIN_HOME (or storage_path= in setup_stepchain()) to a writable folder",
            ) from None
        return self.home

    def answer_limit(self) -> int:
        """The largest answer, in bytes, an LLM server may send (after decompression).

        Raises:
            UsageError: $STEPCHAIN_MAX_ANSWER_BYTES is not a size such as 33554432 or 32MiB.
        """
        if self.max_answer_bytes is not None:
            return self.max_answer_bytes
        return size_from_env(MAX_ANSWER_ENV, DEFAULT_MAX_ANSWER_BYTES)


def size_from_env(name: str, default: int, minimum: int = 1024) -> int:
    """A size in bytes from environment variable `name` (33554432, 32MiB, 512KiB, 100MB), else
    `default`.

    Raises:
        UsageError: The variable is set but is not such a size, or is below `minimum`.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    found = _SIZE.fullmatch(text)
    size = int(found.group(1)) * _UNITS[found.group(2).lower()] if found else 0
    if size < minimum:
        from stepchain.errors import UsageError

        raise UsageError(
            f"{name}={text[:40]!r} is not a size of at least {format_size(minimum)}",
            "set it to a number of bytes, or with a unit: 64MiB, 512KiB, 1GiB, 100MB "
            f"(default: {format_size(default)})",
        )
    return size


def format_size(size: int) -> str:
    """Bytes for a person: 32 MiB, 1.5 GiB, 900 bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size:,} bytes"


# The one process default, set only by setup_stepchain() for users of the 0.3 API.
_configured: ContextVar[Settings | None] = ContextVar("stepchain_settings", default=None)


def current_settings(explicit: Settings | None = None) -> Settings:
    return explicit or _configured.get() or Settings.from_env()


def setup_stepchain(storage_path: str | Path | None = None, log_level: str = "WARNING") -> Settings:
    """Configure the state folder and the `stepchain` logger for this process.

    Args:
        storage_path: folder for the cache and run records (default: $STEPCHAIN_HOME or ./.stepchain).
        log_level: level of the `stepchain` logger, e.g. "INFO" or "WARNING".
    """
    settings = Settings.from_env(storage_path)
    settings = Settings(home=settings.home, log_level=log_level.upper())
    configure_logging(settings.log_level)
    _configured.set(settings)
    return settings


LOG_FIELDS = ("run_id", "step_id", "kind", "attempt", "status", "duration", "cached", "tokens")


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    """Level and format of the `stepchain` logger, to stderr; `fmt` is "text" or "json".

    The handler is added once; a later call changes its level and format.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    handler = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        logger.addHandler(handler)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))


def reset_logging() -> None:
    """Remove what `configure_logging` added (the CLI calls it when a command ends)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (it may be replaced, e.g. in tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the step's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)
