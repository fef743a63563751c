"""Where StepChain keeps its state and how it logs: one settings object, passed around."""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

LOGGER_NAME = "stepchain"


@dataclass(frozen=True)
class Settings:
    """The state folder (cache, run records, locks) and the log level."""

    home: Path
    log_level: str = "WARNING"

    @classmethod
    def from_env(cls, storage_path: str | Path | None = None) -> Settings:
        """storage_path, else $STEPCHAIN_HOME, else .stepchain/ in the working directory."""
        home = storage_path or os.environ.get("STEPCHAIN_HOME") or Path.cwd() / ".stepchain"
        return cls(home=Path(home).expanduser().resolve())

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
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(settings.log_level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    _configured.set(settings)
    return settings
