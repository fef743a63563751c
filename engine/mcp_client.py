"""Live MCP sessions: one connection per server, shared by every step of a run.

The SDK's `async with Client(...)` must be entered and exited in one task, so each session
lives in a task of its own (a `_Link`) that owns it; steps in any task send requests through
it. A server that crashed, hung or wrote garbage is retired and a fresh one is started on the
next call, so a retry gets a clean server. Stdio servers inherit only a minimal environment
plus their `env`, and their stderr goes to a temp file whose tail is quoted in errors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, TypeVar

import anyio
import httpx2
import jsonschema
import mcp_types
from jsonschema.exceptions import best_match
from mcp import Client, MCPError
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import ValidationError
from stepchain import __version__
from stepchain.errors import RetryableStepError, StepError, StepTimeout

log = logging.getLogger("stepchain.mcp")
_T = TypeVar("_T")

START_TIMEOUT = 30.0  # seconds for a server to start and answer the handshake or tools/list
_STOP_GRACE = 10.0  # seconds a stopping session gets before it is cancelled outright
_STDERR_TAIL = 2000  # characters of a server's stderr quoted in errors
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

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of command and url")


class _Link:
    """One server process or HTTP session, owned by a task of its own."""

    def __init__(self, spec: McpServerSpec) -> None:
        self.spec = spec
        self.client: Client | None = None
        self.failure: str | None = None  # why this link must not be used again
        self.transient = False  # whether it failed the way a network hiccup does
        self.inflight = 0
        self.retired = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._scope = anyio.CancelScope()  # cancelled to stop a session that will not stop politely
        # Closed when the session ends; the server writes its stderr here, not to our terminal.
        self._stderr: IO[bytes] | None = tempfile.TemporaryFile() if spec.command else None  # noqa: SIM115
        self._stderr_tail = ""
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
            return streamable_http_client(spec.url)
        program, *args = spec.command or []
        if program in ("python", "python3"):
            program = sys.executable  # the engine's interpreter, with the engine's packages
        inherited = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        params = StdioServerParameters(
            command=program, args=args, env=inherited | spec.env, cwd=spec.cwd
        )
        return stdio_client(params, errlog=self._stderr)  # type: ignore[arg-type]

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
            leaf = _leaf(exc)
            self.transient = self.spec.url is not None and isinstance(leaf, _NETWORK_ERRORS)
            if self.failure is None:
                self.failure = _describe(leaf)
                if _is_closed(leaf) and not self.ready.done():
                    self.failure = "it closed the connection before answering (did it exit?)"
            log.debug("MCP server %r session ended: %s", self.spec.name, self.failure)
        finally:
            self.client = None
            self.failure = self.failure or "the session ended"
            if not self.ready.done():
                self.ready.set_exception(StepError(self.failure))
                self.ready.exception()  # retrieved here: nobody may be waiting any more
            self._stderr_tail = self.stderr_tail()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    async def _on_message(self, message: object) -> None:
        if isinstance(message, Exception):  # the transport could not parse what the server sent
            self.failure = f"sent something that is not JSON-RPC: {_describe(message)}"
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
        if self._stderr is None:
            return self._stderr_tail
        size = os.fstat(self._stderr.fileno()).st_size
        data = os.pread(self._stderr.fileno(), _STDERR_TAIL, max(0, size - _STDERR_TAIL))
        return data.decode("utf-8", "replace").strip()


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


class McpConnection:
    """One live session to one server, shared by all steps of a run."""

    def __init__(self, spec: McpServerSpec, *, start_timeout: float = START_TIMEOUT) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self._link: _Link | None = None
        self._retiring: set[_Link] = set()
        self._lock = asyncio.Lock()
        self._tools: dict[str, mcp_types.Tool] | None = None

    async def start(self) -> None:
        """Start the server (or reconnect) unless a usable session is already up.

        Raises:
            StepError: The server did not start or did not answer the handshake.
        """
        await self._live_link()

    async def list_tools(self) -> list[dict[str, Any]]:
        """The server's allowed tools as `{"name", "description", "input_schema"}`, cached."""
        if self._tools is None:
            tools: dict[str, mcp_types.Tool] = {}
            cursor: str | None = None
            while True:
                link = await self._live_link()
                list_page = partial(Client.list_tools, cursor=cursor)
                page = await self._request(link, "tools/list", self.start_timeout, list_page)
                tools.update((tool.name, tool) for tool in page.tools)
                cursor = page.next_cursor
                if cursor is None:
                    break
            self._tools = tools
        return [
            {"name": t.name, "description": t.description or "", "input_schema": t.input_schema}
            for t in self._tools.values()
            if self._allowed(t.name)
        ]

    async def call_tool(
        self, tool: str, arguments: dict[str, Any], *, timeout: float | None
    ) -> object:
        """Call one tool; return its structured content, or its text.

        Raises:
            StepError: The tool is not allowed or unknown, the arguments do not match its
                input schema, or the tool reported an error.
            StepTimeout: No answer within `timeout`; the server is restarted on the next call.
            RetryableStepError: The server crashed, the connection was lost or the server
                sent garbage; the server is restarted on the next call.
        """
        name = self.spec.name
        if not self._allowed(tool):
            allowed = ", ".join(self.spec.allowed_tools or ()) or "none"
            raise StepError(
                f"MCP tool {tool!r} of server {name!r} is not allowed (allowed_tools: {allowed})",
                f"add it to allowed_tools of tools.{name} in the pipeline if it is safe",
            )
        available = {t["name"]: t for t in await self.list_tools()}
        if tool not in available:
            raise StepError(
                f"MCP server {name!r} has no tool {tool!r}; "
                f"available: {', '.join(sorted(available)) or 'none'}"
            )
        self._validate(tool, available[tool]["input_schema"], arguments)
        link = await self._live_link()
        call = partial(Client.call_tool, name=tool, arguments=arguments)
        result = await self._request(link, f"tool {tool!r}", timeout, call)
        return self._output(tool, result)

    async def close(self) -> None:
        """Stop every session this connection started; safe to call twice."""
        links = [link for link in (self._link, *self._retiring) if link is not None]
        self._link = None
        self._retiring.clear()
        for link in links:
            link.stop()
        await asyncio.gather(*(link.join() for link in links))

    def _allowed(self, tool: str) -> bool:
        return self.spec.allowed_tools is None or tool in self.spec.allowed_tools

    async def _live_link(self) -> _Link:
        async with self._lock:
            link = self._link
            if link is not None and link.usable:
                return link
            if link is not None:
                self._retire(link)
            self._link = link = _Link(self.spec)
            log.debug("starting MCP server %r", self.spec.name)
            try:
                await asyncio.wait_for(asyncio.shield(link.ready), self.start_timeout)
            except BaseException as exc:  # also a cancelled caller: never leave a server behind
                self._link = None
                if isinstance(exc, TimeoutError):
                    link.failure = f"no answer to the handshake within {self.start_timeout:g}s"
                link.failure = link.failure or "the start was interrupted"
                self._retire(link)
                await link.join()
                if not isinstance(exc, TimeoutError | StepError):
                    raise
                error = RetryableStepError if link.transient else StepError
                raise error(
                    f"MCP server {self.spec.name!r} failed to start: {link.failure}"
                    + self._stderr_note(link),
                    f"check `command`/`url` of tools.{self.spec.name} and run it by hand",
                ) from None
            return link

    def _retire(self, link: _Link) -> None:
        """Stop a link once its last in-flight request is done; close() waits for it."""
        link.retired = True
        self._retiring = {old for old in self._retiring if not old.task.done()} | {link}
        if link.inflight == 0:
            link.stop(force=link.failure is not None)

    async def _request(
        self,
        link: _Link,
        what: str,
        timeout: float | None,
        send: Callable[[Client], Awaitable[_T]],
    ) -> _T:
        """Send one request on `link`, mapping every transport failure to a step error."""
        name = self.spec.name
        link.inflight += 1
        try:
            with anyio.move_on_after(timeout):
                return await send(link.require())
            link.failure = f"did not answer {what} within {timeout:g}s"
            raise StepTimeout(
                f"MCP server {name!r} did not answer {what} within {timeout:g}s",
                "the server is restarted on the next call; raise the step's timeout if it is slow",
            )
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED or link.failure is not None:
                link.failure = link.failure or "closed the connection"
                raise self._lost(link, what) from None
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                link.failure = f"did not answer {what} in time"
                raise StepTimeout(f"MCP server {name!r} did not answer {what}: {exc}") from None
            error = RetryableStepError if exc.code == mcp_types.INTERNAL_ERROR else StepError
            raise error(f"MCP server {name!r} rejected {what}: {self._mask(str(exc))}") from None
        except (ValidationError, RuntimeError) as exc:  # a reply that is not a valid result
            link.failure = f"sent an invalid reply ({_describe(exc)})"
            raise self._lost(link, what) from None
        except (*_NETWORK_ERRORS, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            link.failure = link.failure or f"lost the connection ({_describe(exc)})"
            raise self._lost(link, what) from None
        finally:
            link.inflight -= 1
            if link.failure is not None:
                self._retire_if_current(link)
            if link.retired and link.inflight == 0:
                link.stop(force=True)

    def _retire_if_current(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            self._retire(link)

    def _lost(self, link: _Link, what: str) -> RetryableStepError:
        self._retire_if_current(link)
        return RetryableStepError(
            f"MCP server {self.spec.name!r} {link.failure} (during {what})"
            + self._stderr_note(link),
            "the server is restarted on the next attempt",
        )

    def _validate(self, tool: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise StepError(
                f"arguments for MCP tool {self.spec.name}.{tool} do not match its input schema:"
                f" {where}: {error.message}"
            )

    def _output(self, tool: str, result: mcp_types.CallToolResult) -> object:
        text = "\n".join(c.text for c in result.content if isinstance(c, mcp_types.TextContent))
        if result.is_error:
            raise StepError(
                f"MCP tool {self.spec.name}.{tool} failed: {self._mask(text) or 'no message'}"
            )
        if result.structured_content is not None:
            assert self._tools is not None
            schema = self._tools[tool].output_schema or {}
            # The SDK wraps a non-object return value as {"result": value}; hand back the value.
            if set(schema.get("properties", {})) == {"result"} and schema.get("required") == [
                "result"
            ]:
                return result.structured_content.get("result")
            return result.structured_content
        if text or not result.content:
            return text
        return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in result.content]

    def _stderr_note(self, link: _Link) -> str:
        tail = self._mask(link.stderr_tail())
        return "\n  server stderr (tail):\n    " + tail.replace("\n", "\n    ") if tail else ""

    def _mask(self, text: str) -> str:
        """Hide env values (they may be secrets) in text that came from the server."""
        for value in sorted(self.spec.env.values(), key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text


class McpPool:
    """All MCP connections of one run, keyed by server name, started on first use."""

    def __init__(
        self, specs: dict[str, McpServerSpec], *, start_timeout: float = START_TIMEOUT
    ) -> None:
        self._specs = dict(specs)
        self._start_timeout = start_timeout
        self._connections: dict[str, McpConnection] = {}

    async def get(self, name: str) -> McpConnection:
        """The started connection to server `name`.

        Raises:
            StepError: No server of that name, or it failed to start.
        """
        if name not in self._specs:
            known = ", ".join(sorted(self._specs)) or "none"
            raise StepError(f"no MCP server named {name!r} (known: {known})")
        connection = self._connections.get(name)
        if connection is None:
            connection = McpConnection(self._specs[name], start_timeout=self._start_timeout)
            self._connections[name] = connection
        await connection.start()
        return connection

    async def close_all(self) -> None:
        """Close every connection (stopping stdio servers); safe to call twice."""
        await asyncio.gather(*(c.close() for c in self._connections.values()))

    async def __aenter__(self) -> McpPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()


_NETWORK_ERRORS = (OSError, httpx2.TransportError)


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: the one that says what happened."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """A one-line reason from an exception."""
    exc = _leaf(exc)
    if isinstance(exc, ValidationError) and exc.errors():
        error = exc.errors()[0]
        if error["type"] == "json_invalid":  # quote the offending line itself
            return repr(str(error["input"])[:200])
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else error["msg"]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _is_closed(exc: BaseException) -> bool:
    return isinstance(exc, MCPError) and exc.code == mcp_types.CONNECTION_CLOSED
