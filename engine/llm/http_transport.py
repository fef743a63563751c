"""A lean HTTP/1.1 keep-alive transport for the OpenAI SDK's client, on asyncio protocols.

Why: an LLM DAG sends its requests one after another from one event loop, so the HTTP stack's
CPU per request delays every request behind it. The SDK's default stack (httpx2 -> httpcore2 ->
h11 -> anyio) costs ~1.5 ms of CPU per request here; this transport does the same exchange in
~0.1 ms. The SDK still builds every request, adds auth and headers, applies timeouts and maps
errors: only the bytes on the socket are ours. tests/test_http_transport.py holds it to that.

What it does, and what it leaves to the SDK's default transport:
- HTTP/1.1 over TCP or TLS (one TLS context per process, from `tls_context`), one request per
  connection at a time, idle connections kept per host for `KEEPALIVE_EXPIRY` seconds.
- Bodies by Content-Length, chunked, or up to the close; 1xx skipped; HEAD/204/304 have none
  (the message format is `http1`). The body is read whole before the response is returned (StepChain never streams answers),
  so the connection goes back to the pool at once. Content-Encoding is decoded by httpx2.
- httpx2's timeouts (connect, read, write) and exception types, so the SDK's APITimeoutError
  and APIConnectionError come out as before.
- A reused connection that the server closed while idle is retried once on a new connection,
  when no byte of the answer had come back.
- A cancelled request (step timeout, Ctrl-C) closes its connection.
- A connection belongs to the event loop that opened it: the first request from another loop
  (a new `asyncio.run`) shuts the idle ones down, without calling into their (closed) loop.
- Proxies: `LLMClient` uses the SDK's default transport when the environment names a proxy
  for the server (`proxy_in_env`), since httpx2 ignores proxy variables given a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
from stepchain.llm.http1 import encode_request, read_response

__all__ = ["KEEPALIVE_EXPIRY", "LeanTransport", "proxy_in_env"]

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept, as httpx2's default
MAX_IDLE_PER_HOST = 100  # the SDK's own max_keepalive_connections


def proxy_in_env(url: str) -> bool:
    """Whether HTTP(S)_PROXY / ALL_PROXY (minus NO_PROXY) route `url` through a proxy."""
    found = urllib.request.getproxies_environment()
    scheme = url.split("://", 1)[0].lower()
    if not (found.get(scheme) or found.get("all")):
        return False
    host = httpx2.URL(url).host
    return not urllib.request.proxy_bypass_environment(host, found)


class _Connection(asyncio.Protocol):
    """One socket: bytes in a buffer, and a future for whoever waits on more."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.received = 0  # bytes read over the connection's life
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # let asyncio close the socket

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the transport -----------------------------------------------------------------
    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx2.WriteError("the connection was closed before the request was sent")
        self.transport.write(data)
        if self._drained is not None:
            await _within(self._drained, timeout, httpx2.WriteTimeout)

    async def more(self, timeout: float | None) -> None:
        """Wait until more bytes arrive or the server closes; ReadTimeout after `timeout`."""
        if self.closed:
            raise httpx2.RemoteProtocolError("the server closed the connection mid-answer")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await _within(self._waiter, timeout, httpx2.ReadTimeout)
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """Close from outside its event loop (closed, or another thread's): shut the socket
        down with no call into that loop; the socket itself is freed with the transport."""
        self.closed = True
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


async def _within(future: asyncio.Future[None], timeout: float | None, error: type) -> None:
    """Await `future`; after `timeout` seconds raise `error` (an httpx2 timeout) instead."""
    if timeout is None:
        await future
        return
    loop = asyncio.get_running_loop()
    expired: list[bool] = []

    def expire() -> None:
        if not future.done():
            expired.append(True)
            future.cancel()

    handle = loop.call_later(timeout, expire)
    try:
        await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if expired and not (task is not None and task.cancelling()):  # ours, not a caller's
            raise error(f"no answer within {timeout:g} s") from None
        raise
    finally:
        handle.cancel()


class LeanTransport(httpx2.AsyncBaseTransport):
    """httpx2's transport interface over `_Connection`s; pass it as `AsyncClient(transport=)`."""

    def __init__(self, tls_context: Callable[[], ssl.SSLContext]) -> None:
        self._tls_context = tls_context
        self._idle: dict[tuple[bytes, str, int], list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        tls = url.scheme == "https"
        origin = (url.raw_scheme, url.host, url.port or (443 if tls else 80))
        timeouts = request.extensions.get("timeout") or {}
        head, body = encode_request(request, [part async for part in request.stream])
        conn, reused = await self._acquire(origin, tls, request, timeouts.get("connect"))
        while True:
            received = conn.received
            try:
                await conn.write(head + body if len(body) < 65536 else head, timeouts.get("write"))
                if len(body) >= 65536:
                    await conn.write(body, timeouts.get("write"))
                status, reason, headers, data, keep = await read_response(
                    conn, request.method, timeouts.get("read")
                )
                break
            except (httpx2.RemoteProtocolError, httpx2.WriteError) as exc:
                conn.close()
                if not reused or conn.received != received:  # only a stale idle one is retried
                    raise exc from None
                # Once, on a new connection: the other idle ones may be as stale as this one.
                conn = await self._connect(origin, tls, request, timeouts.get("connect"))
                reused = False
            except BaseException:
                conn.close()  # timed out, cancelled or broken: its state is unknown
                raise
        if keep and not conn.closed:
            self._release(origin, conn)
        else:
            conn.close()
        return httpx2.Response(
            status,
            headers=headers,
            stream=_Body(data),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        self._drop_idle()

    def _drop_idle(self) -> None:
        """Close every idle connection; those of another event loop without calling into it
        (after `asyncio.run` that loop is closed, and closing its transports would raise)."""
        ours = self._loop is asyncio.get_running_loop()
        for conns in self._idle.values():
            for conn in conns:
                if ours:
                    conn.close()
                else:
                    conn.abandon()
        self._idle.clear()

    async def _acquire(
        self, origin: tuple[bytes, str, int], tls: bool, request: httpx2.Request, timeout: Any
    ) -> tuple[_Connection, bool]:
        """An idle connection to `origin` (and True), or a new one (and False)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a connection belongs to the loop that opened it
            self._drop_idle()
            self._loop = loop
        now = time.monotonic()
        idle = self._idle.get(origin, [])
        while idle:
            conn = idle.pop()
            if conn.closed or conn.buffer or now - conn.idle_since > KEEPALIVE_EXPIRY:
                conn.close()
                continue
            return conn, True
        return await self._connect(origin, tls, request, timeout), False

    async def _connect(
        self, origin: tuple[bytes, str, int], tls: bool, request: httpx2.Request, timeout: Any
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        host = origin[1]
        sni = request.extensions.get("sni_hostname") or host
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    origin[2],
                    ssl=self._tls_context() if tls else None,
                    server_hostname=sni if tls else None,
                )
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"could not connect within {timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from None
        return conn

    def _release(self, origin: tuple[bytes, str, int], conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            idle.pop(0).close()
        idle.append(conn)


class _Body(httpx2.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._data:
            yield self._data
