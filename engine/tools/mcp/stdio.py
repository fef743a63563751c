"""The stdio transport for MCP servers: bounded reads, and servers tied to the run.

The SDK's `stdio_client` holds a line of any length in memory (and copies it again for every
chunk that arrives), so a server answering with 50 MB ran the step into its timeout. This
transport speaks the same newline-delimited JSON-RPC through the SDK's public pieces (the
`Client` takes any transport; messages are parsed with `mcp_types`), but:

- **A message larger than the limit is never held.** Once a line passes `max_bytes` its first
  bytes are kept, the rest is read and dropped up to the newline, and the session is handed a
  JSON-RPC error for the request it answered (`TOO_LARGE`), so that call fails with a size
  error and the server goes on serving the others. A message whose id is not among its first
  bytes cannot be matched to a request: it ends the session (`MessageTooLarge`).
- **Its stderr is kept as a tail.** It is read as it comes and only its last bytes are kept
  (quoted, masked, in errors), so a server flooding stderr fills neither memory nor disk.
- **The server is tied to the run.** It starts through `launcher.py` in a process group of its
  own, which polls the engine's process: a `kill -9` of the engine takes the server and its children
  with it. Stopping follows the SDK (and the MCP spec): close stdin, wait, then SIGTERM and
  SIGKILL the group, every wait bounded.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage
from stepchain.settings import format_size, size_from_env

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "MAX_MESSAGE_ENV",
    "TOO_LARGE",
    "MessageTooLarge",
    "StderrTail",
    "format_size",
    "max_message_from_env",
    "stdio_transport",
]

MAX_MESSAGE_ENV = "STEPCHAIN_MAX_MCP_RESULT_BYTES"
DEFAULT_MAX_MESSAGE = 16 * 2**20  # generous: MCP results are meant for a model's context
LAUNCHER = Path(__file__).with_name("launcher.py")
TOO_LARGE = -32099  # code of the error that stands in for a reply over the size limit
_HEAD = 4096  # bytes of an oversized message searched for its id
_ID = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d+|"[^"\\]{0,200}")')
_EXIT_GRACE = 2.0  # seconds a server gets to exit after its stdin closes, then after SIGTERM
_FLUSH_GRACE = 0.5  # seconds to write what the session already sent before stdin closes
_STDERR_GRACE = 1.0  # seconds for a server's last stderr to arrive after its stdout closed


class MessageTooLarge(Exception):
    """A server sent a message over the size limit that answers no request we can name."""


class StderrTail:
    """The last `size` bytes a server wrote to stderr; memory stays bounded however much it
    writes."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self._size:
            del self._data[: -self._size]

    def text(self) -> str:
        return bytes(self._data[-self._size :]).decode("utf-8", "replace").strip()


def max_message_from_env() -> int:
    """The largest message a stdio MCP server may send: $STEPCHAIN_MAX_MCP_RESULT_BYTES.

    Raises:
        UsageError: The variable is set but is not a size such as 16777216 or 16MiB.
    """
    return size_from_env(MAX_MESSAGE_ENV, DEFAULT_MAX_MESSAGE)


@asynccontextmanager
async def stdio_transport(
    argv: list[str], *, env: dict[str, str], cwd: str | None, stderr: StderrTail, max_bytes: int
) -> AsyncIterator[tuple[Any, Any]]:
    """Start `argv` and yield the (read, write) streams the SDK's `Client` expects.

    Raises:
        OSError: The program does not exist or cannot be run.
    """
    program, *args = argv
    _check_program(program, env, cwd)
    process = await anyio.open_process(
        [sys.executable, "-I", str(LAUNCHER), str(os.getpid()), program, *args],
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    # No await between the spawn and the task group: a cancellation there would leak the server.
    to_session, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    writer_done, stderr_done = anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_keep_tail, process, stderr, stderr_done)
        tasks.start_soon(_read, process, to_session, max_bytes, stderr_done)
        tasks.start_soon(_write, process, from_session, to_session, writer_done)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):  # every wait inside is bounded
                read_stream.close()
                write_stream.close()
                with anyio.move_on_after(_FLUSH_GRACE):
                    await writer_done.wait()
                await _stop(process)
                for stream in (read_stream, write_stream, to_session, from_session):
                    await stream.aclose()
            tasks.cancel_scope.cancel()


def _check_program(program: str, env: dict[str, str], cwd: str | None) -> None:
    """Fail as the spawn would have: the launcher itself always starts."""
    if os.sep not in program:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        return
    path = Path(cwd or ".", program)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)


async def _read(
    process: Process,
    to_session: MemoryObjectSendStream[SessionMessage | Exception],
    max_bytes: int,
    stderr_done: anyio.Event,
) -> None:
    """Hand the session one message per line of stdout; then drain stdout until it closes."""
    assert process.stdout is not None
    lines = _Lines(process.stdout, max_bytes)
    async with to_session:
        while True:
            try:
                line = await lines.next()
            except (
                anyio.EndOfStream,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
                OSError,
            ):
                # A server that exits closes stderr too: let the tail catch its last words
                # before the session hears of the end and quotes them.
                with anyio.move_on_after(_STDERR_GRACE):
                    await stderr_done.wait()
                return
            if isinstance(line, bytes) and not line.strip():
                continue
            try:
                await to_session.send(_message(line, max_bytes))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                break  # the session is gone
    # A server flushing its output must not block on a full pipe while it is being stopped.
    with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        while True:
            await process.stdout.receive()


async def _keep_tail(process: Process, tail: StderrTail, done: anyio.Event) -> None:
    assert process.stderr is not None
    try:
        with suppress(
            anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError
        ):
            while True:
                tail.write(await process.stderr.receive())
    finally:
        done.set()


async def _write(
    process: Process,
    from_session: MemoryObjectReceiveStream[SessionMessage],
    to_session: MemoryObjectSendStream[SessionMessage | Exception],
    done: anyio.Event,
) -> None:
    assert process.stdin is not None
    try:
        async with from_session:
            async for message in from_session:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await process.stdin.send(data.encode() + b"\n")
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        # The server stopped reading (it may still be alive): end the session rather than
        # leave a request waiting for an answer that cannot come.
        await to_session.aclose()
    finally:
        done.set()


def _message(line: bytes | _Oversized, max_bytes: int) -> SessionMessage | Exception:
    if isinstance(line, _Oversized):
        found = _ID.match(line.head)
        limit = format_size(max_bytes)
        if found is None:
            return MessageTooLarge(f"sent a message of more than {limit}")
        error = mcp_types.ErrorData(code=TOO_LARGE, message=f"a reply of more than {limit}")
        request_id = json.loads(found.group(1))
        return SessionMessage(mcp_types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:  # the session reports it (see McpSession._on_message)
        return exc


class _Oversized:
    """Stands for a line longer than the limit: its first bytes only."""

    def __init__(self, head: bytes) -> None:
        self.head = head


class _Lines:
    """Lines of a byte stream, none held past `max_bytes`."""

    def __init__(self, stream: ByteReceiveStream, max_bytes: int) -> None:
        self._stream = stream
        self._max = max_bytes
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no newline

    async def next(self) -> bytes | _Oversized:
        """The next line, without its newline.

        Raises:
            anyio.EndOfStream: The stream ended (a last line without a newline is dropped).
        """
        while True:
            end = self._buffer.find(b"\n", self._searched)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._searched = 0
                return line
            self._searched = len(self._buffer)
            if len(self._buffer) > self._max:
                return await self._skip_line()
            self._buffer += await self._stream.receive()

    async def _skip_line(self) -> _Oversized:
        """Drop the rest of an oversized line; keep what follows its newline."""
        oversized = _Oversized(bytes(self._buffer[:_HEAD]))
        self._buffer.clear()
        while True:
            chunk = await self._stream.receive()
            end = chunk.find(b"\n")
            if end >= 0:
                self._buffer += chunk[end + 1 :]
                self._searched = 0
                return oversized


async def _stop(process: Process) -> None:
    """Close stdin, give the server time to exit, then end its process group."""
    assert process.stdin is not None and process.stdout is not None
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await process.stdin.aclose()
    if not await _exited(process, _EXIT_GRACE):
        await terminate_posix_process_tree(process, _EXIT_GRACE)
        await _exited(process, _EXIT_GRACE)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await pipe.aclose()
    # The asyncio transport stays open while anything holds a pipe end; nothing public closes it.
    transport = getattr(getattr(process, "_process", None), "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with suppress(PermissionError):
            close()


async def _exited(process: Process, timeout: float) -> bool:
    """Whether the process exits within `timeout` (polled: `wait()` also waits for pipe EOF)."""
    with anyio.move_on_after(timeout):
        while process.returncode is None:
            await anyio.sleep(0.01)
        return True
    return False
