"""Function tools for the engine tests. Each call appends a line to $CALLS_LOG (side effects)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


def _log(entry: str) -> None:
    path = os.environ.get("CALLS_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(entry + "\n")


def echo(value):
    """Return the value unchanged."""
    _log(f"echo {value}")
    return value


def add(a: int, b: int) -> int:
    _log(f"add {a} {b}")
    return a + b


def nap(name: str, seconds: float = 0.1) -> str:
    _log(f"start {name}")
    time.sleep(seconds)
    _log(f"end {name}")
    return name


async def anap(name: str, seconds: float = 0.1) -> str:
    _log(f"start {name}")
    await asyncio.sleep(seconds)
    _log(f"end {name}")
    return name


def boom(message: str = "kaput") -> None:
    _log("boom")
    raise ValueError(message)


def flaky(name: str, failures: int = 1) -> str:
    """Raise ConnectionError on the first `failures` calls (counted in a marker file)."""
    marker = Path(os.environ["CALLS_LOG"]).with_suffix(f".{name}.count")
    count = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(count + 1))
    _log(f"flaky {name} {count + 1}")
    if count < failures:
        raise ConnectionError(f"connection reset (call {count + 1})")
    return f"{name} ok"


def not_json() -> object:
    return object()


def leak_env(name: str) -> None:
    """A tool whose error message contains a (secret) environment variable it read itself."""
    import os

    raise ConnectionError(f"server refused token {os.environ[name]}")


def leak(token: str) -> None:
    """A tool whose error message contains its (secret) argument."""
    raise ConnectionError(f"server refused token {token}")
