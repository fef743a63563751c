"""One MCP server session, in a task of its own, and how its failures read.

The SDK's `async with Client(...)` must be entered and exited in one task, so each session
lives in a task of its own (a `McpSession`) that owns it; steps in any task send requests
through it (see `mcp_client`). Stdio servers inherit only a minimal environment plus their
`env`; the last bytes of their stderr are kept (see `stdio`) and quoted in errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types
from mcp import Client, MCPError
from mcp.client.stdio import get_default_environment
from pydantic import ValidationError
from stepchain import __version__
from stepchain.errors import StepError
from stepchain.tools.mcp.http import http_transport
from stepchain.tools.mcp.stdio import (
    DEFAULT_MAX_MESSAGE,
    MAX_MESSAGE_ENV,
    MessageTooLarge,
    StderrTail,
    stdio_transport,
)

log = logging.getLogger("stepchain.mcp")

_STOP_GRACE = 10.0  # seconds a stopping session gets before it is cancelled outright
_STDERR_TAIL = 2000  # bytes of the end of a server's stderr quoted in errors
# Besides the SDK's minimal set (HOME, PATH, ...), stdio servers see these and their own `env`.
_INHERITED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")


@dataclass(frozen=True)
class McpServerSpec:
    """How to reach one MCP server, built by the engine from a pipeline's `tools:` entry."""

    name: str
    command: list[str] | None  # stdio server argv; `python` means this interpreter
    url: str | None  # streamable HTTP endpoint
    env: dict[str, str]  # rendered; values may be secrets, so never log them
    cwd: str | None  # the pipeline's folder: stdio servers start there
    allowed_tools: tuple[str, ...] | None  # None: every tool is allowed
    max_message_bytes: int = DEFAULT_MAX_MESSAGE  # the largest message a server may send

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of command and url")


class McpSession:
    """One server process or HTTP session, owned by a task of its own."""

    def __init__(self, spec: McpServerSpec) -> None:
        self.spec = spec
        self.client: Client | None = None
        self.failure: str | None = None  # why this link must not be used again
        self.transient = False  # whether it failed the way a network hiccup does
        self.inflight = 0
        self.inflight_at_loss: int | None = None  # calls in flight when the server was lost
        self.retired = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._scope = anyio.CancelScope()  # cancelled to stop a session that will not stop politely
        # The server's stderr goes here, not to our terminal: its last bytes, quoted in errors.
        self._stderr = StderrTail(_STDERR_TAIL)
        self.task = asyncio.create_task(self._serve(), name=f"mcp-{spec.name}")

    def require(self) -> Client:
        """The live client; a session that already ended reads as a closed connection."""
        if self.client is None:
            raise MCPError(mcp_types.CONNECTION_CLOSED, "Connection closed")
        return self.client

    @property
    def usable(self) -> bool:
        return self.failure is None and self.client is not None and not self.task.done()

    @asynccontextmanager
    async def _watched_transport(self) -> AsyncIterator[tuple[Any, Any]]:
        async with self._transport() as (read_stream, write_stream):
            yield _EndWatch(read_stream, self._on_end), write_stream

    def _on_end(self) -> None:
        # The server went away (it exited, or the HTTP stream dropped), perhaps between calls:
        # flag it now so the next call starts a fresh server instead of failing on a dead one.
        self.failure = self.failure or "closed the connection"

    def _transport(self) -> Any:
        spec = self.spec
        if spec.url is not None:
            return http_transport(spec.url, max_bytes=spec.max_message_bytes)
        program, *args = spec.command or []
        if program in ("python", "python3"):
            program = sys.executable  # the engine's interpreter, with the engine's packages
        inherited = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        return stdio_transport(
            [program, *args],
            env=get_default_environment() | inherited | spec.env,
            cwd=spec.cwd,
            stderr=self._stderr,
            max_bytes=spec.max_message_bytes,
        )

    async def _serve(self) -> None:
        try:
            with self._scope:
                client = Client(
                    self._watched_transport(),
                    message_handler=self._on_message,
                    client_info=mcp_types.Implementation(name="stepchain", version=__version__),
                )
                async with client:
                    self.client = client
                    if not self.ready.done():
                        self.ready.set_result(None)
                    await self._stop.wait()
        except (Exception, BaseExceptionGroup) as exc:
            leaf = leaf_error(exc)
            self.transient = self.spec.url is not None and isinstance(leaf, NETWORK_ERRORS)
            if self.failure is None:
                self.failure = describe_error(leaf)
                if is_closed(leaf) and not self.ready.done():
                    self.failure = "it closed the connection before answering (did it exit?)"
            log.debug("MCP server %r session ended", self.spec.name)  # failure: server text
        finally:
            self.client = None
            self.failure = self.failure or "the session ended"
            if not self.ready.done():
                self.ready.set_exception(StepError(self.failure))
                self.ready.exception()  # retrieved here: nobody may be waiting any more

    async def _on_message(self, message: object) -> None:
        if isinstance(message, MessageTooLarge):  # too large to say which request it answers
            self.failure = f"{message} (raise {MAX_MESSAGE_ENV} if that is expected)"
            self.stop(force=True)
        elif isinstance(message, Exception):  # the transport could not parse what the server sent
            self.failure = f"sent something that is not JSON-RPC: {describe_error(message)}"
            self.stop(force=True)

    def stop(self, *, force: bool = False) -> None:
        """Ask the session to end; `force` also cancels whatever it is doing."""
        self._stop.set()
        if force or not self.ready.done():
            self._scope.cancel()

    async def join(self) -> None:
        """Wait for the session to end (closing the transport, stopping the process)."""
        try:
            await asyncio.wait_for(asyncio.shield(self.task), _STOP_GRACE)
        except TimeoutError:
            self._scope.cancel()
            await asyncio.shield(self.task)

    def stderr_tail(self) -> str:
        return self._stderr.text()


class _EndWatch:
    """A transport's read stream (the SDK's `ReadStream` protocol) that reports its end."""

    def __init__(self, stream: Any, on_end: Callable[[], None]) -> None:
        self._stream = stream
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        return getattr(self._stream, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._stream.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._on_end()
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    def __aiter__(self) -> _EndWatch:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._stream.__anext__()
        except (StopAsyncIteration, anyio.ClosedResourceError):
            self._on_end()
            raise

    async def __aenter__(self) -> _EndWatch:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stream.__aexit__(*exc_info)


NETWORK_ERRORS = (OSError, httpx2.TransportError)


def leaf_error(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: the one that says what happened."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe_error(exc: BaseException) -> str:
    """A one-line reason from an exception."""
    exc = leaf_error(exc)
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        if error["type"] == "json_invalid":  # quote the offending line itself
            line = error["input"]
            if isinstance(line, bytes):
                line = line[:200].decode("utf-8", "replace")
            return repr(str(line)[:200])
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def is_closed(exc: BaseException) -> bool:
    return isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED
