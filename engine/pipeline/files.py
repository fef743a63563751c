"""Reading a file a user named (a pipeline, an inputs file): one clear error for every way it
can fail, never a hang (a FIFO, a device) or a traceback (a symlink loop, binary data)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stepchain.errors import StepChainError

MAX_BYTES = 64 * 1024 * 1024  # far beyond any real pipeline or inputs file


def read_user_file(path: str | Path, what: str, error: type[StepChainError]) -> str:
    """The file's text (UTF-8); `error` with a one-line message when it cannot be read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"no such {what}: {path}", "check the path") from None
    except OSError as exc:  # a symlink loop, a name too long, no permission on a folder
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path} is a folder, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is not a regular file (a pipe or a device?): give a {what}")
    if info.st_size > MAX_BYTES:
        raise error(f"{path} is {info.st_size:,} bytes: too large for a {what}")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
