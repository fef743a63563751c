"""The streamable HTTP transport for MCP servers, with the same size limit as stdio.

The SDK's `streamable_http_client` reads a JSON reply whole (`response.aread()`) and bounds
server-sent events at 1 MiB. Here it gets an HTTP client of its own (the SDK's timeouts) that
asks for uncompressed replies and, through a public `response` event hook run before a body is
read, counts every JSON reply as it arrives: past the limit the read stops and the SDK resolves
that request with an error carrying `TOO_LARGE_MARK`. Server-sent events get the same limit
per event (the SDK's `max_sse_event_size`). A reply compressed although StepChain asked for
none is refused the same way, unread: compressed, its size says nothing about what it inflates to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.streamable_http import streamable_http_client

__all__ = ["TOO_LARGE_MARK", "http_transport"]

TOO_LARGE_MARK = "reply over the size limit"
# the SDK's defaults: a server may hold a stream open for long
_TIMEOUT = httpx2.Timeout(30.0, read=300.0)


class _TooLarge(httpx2.StreamError):
    """Ends the read of a reply over the limit; the SDK turns it into an error for the request."""


class _Bounded(httpx2.AsyncByteStream):
    def __init__(self, stream: httpx2.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._stream:
            size += len(chunk)
            if size > self._limit:
                raise _TooLarge(TOO_LARGE_MARK)
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


def _limit_replies(limit: int) -> Any:
    async def hook(response: httpx2.Response) -> None:
        if not response.headers.get("content-type", "").lower().startswith("application/json"):
            return  # server-sent events: bounded per event by the SDK
        declared = response.headers.get("content-length", "")
        encoding = response.headers.get("content-encoding", "identity").lower()
        if (declared.isdigit() and int(declared) > limit) or encoding != "identity":
            response.stream = _Bounded(response.stream, 0)  # type: ignore[arg-type]
        else:
            response.stream = _Bounded(response.stream, limit)  # type: ignore[arg-type]

    return hook


@asynccontextmanager
async def http_transport(url: str, *, max_bytes: int) -> AsyncIterator[tuple[Any, Any]]:
    """Connect to `url` and yield the (read, write) streams the SDK's `Client` expects."""
    async with (
        httpx2.AsyncClient(
            timeout=_TIMEOUT,
            headers={"Accept-Encoding": "identity"},
            event_hooks={"response": [_limit_replies(max_bytes)]},
        ) as client,
        streamable_http_client(url, http_client=client, max_sse_event_size=max_bytes) as streams,
    ):
        yield streams
