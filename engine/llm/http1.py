"""HTTP/1.1 messages on a byte buffer: the request's bytes out, the next response's parts in.

Used by `http_transport`, whose connections keep what the socket delivered in `buffer` and
wait for more with `more(timeout)`. Lenient where RFC 9112 lets a client be (a bare LF ends a
line; 1xx answers are skipped) and strict where leniency would corrupt a body (lengths must be
digits; a connection whose framing is unknown is not reused).
"""

from __future__ import annotations

import re
from typing import Protocol

import httpx2

__all__ = ["MAX_HEAD", "Response", "encode_request", "read_response"]

MAX_HEAD = 64 * 1024  # status line + headers, and any one chunk-size or trailer line
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_NO_BODY_STATUS = {204, 304}

Response = tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]
"""(status, reason, headers, body, keep-alive)"""


class Buffered(Protocol):
    buffer: bytearray
    closed: bool

    async def more(self, timeout: float | None) -> None: ...


def encode_request(request: httpx2.Request, parts: list[bytes]) -> tuple[bytes, bytes]:
    """Request line and headers, and the body (chunk-encoded when httpx2 asked for chunked)."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines.append(b"%s: %s" % (name, value))
    if chunked:
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
    else:
        body = b"".join(parts)
    return b"\r\n".join(lines) + b"\r\n\r\n", body


async def read_response(conn: Buffered, method: str, timeout: float | None) -> Response:
    """The next final response on `conn`, its body read whole."""
    while True:
        status, reason, headers, version = await _read_head(conn, timeout)
        if not (100 <= status < 200) or status == 101:
            break  # 100 Continue, 103 Early Hints: the real answer follows
    fields: dict[bytes, bytes] = {}
    for name, value in headers:  # repeated fields join with commas, as RFC 9110 allows
        key = name.lower()
        fields[key] = fields[key] + b", " + value.lower() if key in fields else value.lower()
    tokens = {t.strip() for t in fields.get(b"connection", b"").split(b",")}
    keep = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
    if method == "HEAD" or status in _NO_BODY_STATUS:
        return status, reason, headers, b"", keep
    if fields.get(b"transfer-encoding", b"").rsplit(b",", 1)[-1].strip() == b"chunked":
        return status, reason, headers, await _read_chunked(conn, timeout), keep
    if b"content-length" in fields:
        length = _content_length(fields[b"content-length"])
        while len(conn.buffer) < length:
            if conn.closed:
                raise httpx2.RemoteProtocolError("the server closed the connection mid-answer")
            await conn.more(timeout)
        data = bytes(conn.buffer[:length])
        del conn.buffer[:length]
        return status, reason, headers, data, keep
    while not conn.closed:  # no length: the body runs to the close
        await conn.more(timeout)
    data = bytes(conn.buffer)
    conn.buffer.clear()
    return status, reason, headers, data, False


async def _read_head(
    conn: Buffered, timeout: float | None
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    while (found := _HEAD_END.search(conn.buffer)) is None:
        if len(conn.buffer) > MAX_HEAD:
            raise httpx2.RemoteProtocolError("the server sent more than 64 KiB of headers")
        if conn.closed:
            raise httpx2.RemoteProtocolError(
                "the server closed the connection mid-answer"
                if conn.buffer
                else "the server closed the connection without an answer"
            )
        await conn.more(timeout)
    status_line, *header_lines = (
        line.removesuffix(b"\r") for line in bytes(conn.buffer[: found.start()]).split(b"\n")
    )
    del conn.buffer[: found.end()]
    try:
        version, code, *rest = status_line.split(b" ", 2)
        status = int(code)
        if not version.startswith(b"HTTP/1.") or not 100 <= status <= 999:
            raise ValueError
    except ValueError:
        raise httpx2.RemoteProtocolError(
            f"not an HTTP/1.1 status line: {status_line[:80]!r}"
        ) from None
    headers = []
    for line in header_lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx2.RemoteProtocolError(f"malformed header line: {line[:80]!r}")
        headers.append((name, value.strip()))
    return status, rest[0] if rest else b"", headers, version


def _content_length(value: bytes) -> int:
    lengths = {v.strip() for v in value.split(b",")}  # a repeated, identical length is allowed
    if len(lengths) != 1 or not (length := lengths.pop()).isdigit():  # int() takes "-1", "+1"
        raise httpx2.RemoteProtocolError(f"the server sent an invalid Content-Length {value!r}")
    return int(length)


async def _read_chunked(conn: Buffered, timeout: float | None) -> bytes:
    parts: list[bytes] = []
    while True:
        size_field = (await _read_line(conn, timeout)).split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_field):  # int(_, 16) would take "0x10", "-1", "1_0"
            raise httpx2.RemoteProtocolError(f"bad chunk size {size_field[:20]!r}")
        size = int(size_field, 16)
        if size == 0:
            while await _read_line(conn, timeout):  # trailers, up to a blank line
                pass
            return b"".join(parts)
        while len(conn.buffer) < size:
            if conn.closed:
                raise httpx2.RemoteProtocolError("the server closed the connection mid-answer")
            await conn.more(timeout)
        parts.append(bytes(conn.buffer[:size]))
        del conn.buffer[:size]
        if await _read_line(conn, timeout):
            raise httpx2.RemoteProtocolError("a chunk longer than its size")


async def _read_line(conn: Buffered, timeout: float | None) -> bytes:
    """The next line, without its CRLF (or bare LF), taken from the buffer."""
    while (end := conn.buffer.find(b"\n")) < 0:
        if conn.closed:
            raise httpx2.RemoteProtocolError("the server closed the connection mid-answer")
        if len(conn.buffer) > MAX_HEAD:
            raise httpx2.RemoteProtocolError("a chunk header longer than 64 KiB")
        await conn.more(timeout)
    line = bytes(conn.buffer[:end])
    del conn.buffer[: end + 1]
    return line.removesuffix(b"\r")
