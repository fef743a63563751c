"""Live MCP connections: one per server, shared by every step of a run.

A connection sends requests through an `McpSession` (see `mcp_session`). A server that
crashed, hung or wrote garbage is retired and a fresh one is started on the next call, so a
retry gets a clean server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import jsonschema
import mcp_types
from jsonschema.exceptions import best_match
from mcp import Client, MCPError
from pydantic import ValidationError
from stepchain.errors import RetryableStepError, StepError, StepTimeout
from stepchain.tools.mcp.http import TOO_LARGE_MARK
from stepchain.tools.mcp.session import (
    NETWORK_ERRORS,
    McpServerSpec,
    McpSession,
    describe_error,
)
from stepchain.tools.mcp.stdio import MAX_MESSAGE_ENV, TOO_LARGE, format_size

__all__ = ["START_TIMEOUT", "McpConnection", "McpPool", "McpServerSpec", "replay_safe"]

log = logging.getLogger("stepchain.mcp")
_T = TypeVar("_T")

START_TIMEOUT = 30.0  # seconds for a server to start and answer the handshake or tools/list


def replay_safe(annotations: mcp_types.ToolAnnotations | None) -> bool:
    """Whether a tool's answer may be replayed from cache when the pipeline does not say.

    Only when the server declares the tool read-only, idempotent and closed-world (no hint, no
    cache): a tool that changes something must run again, and one reaching the open world reads
    state that moves.
    """
    if annotations is None:
        return False
    return (
        annotations.read_only_hint is True
        and annotations.idempotent_hint is not False
        and annotations.open_world_hint is False
    )


def _over_http_limit(exc: MCPError) -> bool:
    """Whether the SDK resolved a request with an error because its HTTP reply (JSON, or a
    server-sent event) was over the size limit."""
    if exc.code == mcp_types.PARSE_ERROR:
        return TOO_LARGE_MARK in str(exc)
    text = str(exc)
    return exc.code == mcp_types.CONNECTION_CLOSED and "exceeded the" in text and "limit" in text


class ServerLost(RetryableStepError):
    """The server crashed, hung up or sent garbage during a call; `shared` if other calls
    were in flight on it too, so this call may not be the one that broke it."""

    def __init__(self, message: str, hint: str, *, shared: bool) -> None:
        super().__init__(message, hint, kind="server")
        self.shared = shared


class McpConnection:
    """One live session to one server, shared by all steps of a run.

    A server lost while several calls were in flight does not say which call broke it: each
    of those calls is sent once more, alone, to a fresh server of its own (one such server at a
    time). The call that crashes it again fails (and its step retries per `retries:`); the
    others get their answers. No call is resent twice, so a crashing server cannot loop.
    """

    def __init__(self, spec: McpServerSpec, *, start_timeout: float = START_TIMEOUT) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self._link: McpSession | None = None
        self._retiring: set[McpSession] = set()
        self._lock = asyncio.Lock()
        self._tools: dict[str, mcp_types.Tool] | None = None
        self._alone = asyncio.Lock()  # one resend on a server of its own at a time

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
            {
                "name": t.name,
                "description": t.description or "",
                "input_schema": t.input_schema,
                "replay_safe": replay_safe(t.annotations),
            }
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
                kind="not_allowed",
            )
        available = {t["name"]: t for t in await self.list_tools()}
        if tool not in available:
            raise StepError(
                f"MCP server {name!r} has no tool {tool!r}; "
                f"available: {', '.join(sorted(available)) or 'none'}",
                kind="tool",
            )
        self._validate(tool, available[tool]["input_schema"], arguments)
        link = await self._live_link()
        call = partial(Client.call_tool, name=tool, arguments=arguments)
        try:
            result = await self._request(link, f"tool {tool!r}", timeout, call)
        except ServerLost as lost:
            if not lost.shared:
                raise
            log.debug("resending tool %r to a fresh server %r of its own", tool, name)
            result = await self._alone_on_fresh_server(f"tool {tool!r}", timeout, call)
        return self._output(tool, result)

    async def _alone_on_fresh_server(
        self, what: str, timeout: float | None, send: Callable[[Client], Awaitable[_T]]
    ) -> _T:
        async with self._alone:
            link = McpSession(self.spec)
            self._retiring.add(link)  # close() stops it if the run ends meanwhile
            try:
                await self._ready(link)
                return await self._request(link, what, timeout, send)
            finally:
                link.retired = True
                link.stop(force=link.failure is not None)
                await link.join()

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

    async def _live_link(self) -> McpSession:
        async with self._lock:
            link = self._link
            if link is not None and link.usable:
                return link
            if link is not None:
                self._retire(link)
            self._link = link = McpSession(self.spec)
            try:
                await self._ready(link)
            except BaseException:
                self._link = None
                raise
            return link

    async def _ready(self, link: McpSession) -> None:
        """Wait for a new session's handshake; on any failure, stop it and say why."""
        log.debug("starting MCP server %r", self.spec.name)
        try:
            await asyncio.wait_for(asyncio.shield(link.ready), self.start_timeout)
        except BaseException as exc:  # also a cancelled caller: never leave a server behind
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

    def _retire(self, link: McpSession) -> None:
        """Stop a link once its last in-flight request is done; close() waits for it."""
        link.retired = True
        self._retiring = {old for old in self._retiring if not old.task.done()} | {link}
        if link.inflight == 0:
            link.stop(force=link.failure is not None)

    async def _request(
        self,
        link: McpSession,
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
            if exc.code == TOO_LARGE or _over_http_limit(exc):  # a reply dropped unread
                limit = format_size(self.spec.max_message_bytes)
                raise StepError(
                    f"MCP server {name!r} answered {what} with more than {limit}, the limit; "
                    f"set {MAX_MESSAGE_ENV} to allow larger results",
                    kind="too_large",
                ) from None
            if exc.code == mcp_types.CONNECTION_CLOSED or link.failure is not None:
                link.failure = link.failure or "closed the connection"
                raise self._lost(link, what) from None
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                link.failure = f"did not answer {what} in time"
                raise StepTimeout(f"MCP server {name!r} did not answer {what}: {exc}") from None
            error = RetryableStepError if exc.code == mcp_types.INTERNAL_ERROR else StepError
            raise error(f"MCP server {name!r} rejected {what}: {self._mask(str(exc))}") from None
        except (ValidationError, RuntimeError) as exc:  # a reply that is not a valid result
            link.failure = f"sent an invalid reply ({describe_error(exc)})"
            raise self._lost(link, what) from None
        except (*NETWORK_ERRORS, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            link.failure = link.failure or f"lost the connection ({describe_error(exc)})"
            raise self._lost(link, what) from None
        finally:
            link.inflight -= 1
            if link.failure is not None:
                self._retire_if_current(link)
            if link.retired and link.inflight == 0:
                link.stop(force=True)

    def _retire_if_current(self, link: McpSession) -> None:
        if self._link is link:
            self._link = None
            self._retire(link)

    def _lost(self, link: McpSession, what: str) -> ServerLost:
        if link.inflight_at_loss is None:  # the first call to hear of it counts them all
            link.inflight_at_loss = link.inflight
        self._retire_if_current(link)
        return ServerLost(
            f"MCP server {self.spec.name!r} {link.failure} (during {what})"
            + self._stderr_note(link),
            "the server is restarted on the next attempt",
            shared=link.inflight_at_loss > 1,
        )

    def _validate(self, tool: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            raise StepError(
                f"arguments for MCP tool {self.spec.name}.{tool} do not match its input schema:"
                f" {where}: {error.message}",
                kind="bad_request",
            )

    def _output(self, tool: str, result: mcp_types.CallToolResult) -> object:
        text = "\n".join(c.text for c in result.content if isinstance(c, mcp_types.TextContent))
        if result.is_error:
            raise StepError(
                f"MCP tool {self.spec.name}.{tool} failed: {self._mask(text) or 'no message'}",
                kind="tool",
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

    def _stderr_note(self, link: McpSession) -> str:
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
        """The connection to server `name`; its server starts (or restarts) on the first request
        that needs it, so asking for a tool list already known starts nothing.

        Raises:
            StepError: No server of that name.
        """
        if name not in self._specs:
            known = ", ".join(sorted(self._specs)) or "none"
            raise StepError(f"no MCP server named {name!r} (known: {known})")
        connection = self._connections.get(name)
        if connection is None:
            connection = McpConnection(self._specs[name], start_timeout=self._start_timeout)
            self._connections[name] = connection
        return connection

    async def close_all(self) -> None:
        """Close every connection (stopping stdio servers); safe to call twice."""
        await asyncio.gather(*(c.close() for c in self._connections.values()))

    async def __aenter__(self) -> McpPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_all()
