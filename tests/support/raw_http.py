"""A scripted HTTP/1.1 server on 127.0.0.1 that sends exact bytes, for wire-level tests.

Each request (read whole: head, then a Content-Length or chunked body) is answered by the next
scripted answer, in order across connections:

* ``bytes``: sent as is; the connection then waits for the client's next request;
* ``trickle(data)``: the same, one byte at a time (each its own TCP segment);
* ``then_close(data)``: ``data`` sent, then the connection closed (no ``Connection: close``);
* ``CLOSE``: the connection closed without an answer;
* ``HANG``: no answer until the client closes the connection (or the server stops);
* ``stream(chunks, pause=, reset=)``: each chunk of an iterable (endless, if need be) sent in
  turn, ``pause`` seconds apart, until it ends, the client closes or the server stops; then the
  connection is closed, or reset (RST) with ``reset=True``.

The server counts the connections it accepts and those the client closes, and keeps every
request's raw bytes. Plain TCP, or TLS with an ``ssl.SSLContext``. Standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["CLOSE", "HANG", "RawServer", "stream", "then_close", "trickle"]


@dataclass(frozen=True)
class _Close:
    data: bytes = b""


CLOSE = _Close()
HANG = object()


@dataclass(frozen=True)
class _Trickle:
    data: bytes


@dataclass(frozen=True)
class _Stream:
    chunks: Iterable[bytes]
    pause: float
    reset: bool


def stream(chunks: Iterable[bytes], *, pause: float = 0.0, reset: bool = False) -> _Stream:
    """Send each chunk in turn, `pause` seconds apart; then close (or reset) the connection."""
    return _Stream(chunks, pause, reset)


def then_close(data: bytes) -> _Close:
    """Send `data`, then close the connection."""
    return _Close(data)


def trickle(data: bytes) -> _Trickle:
    """Send `data` one byte at a time, then wait for the next request."""
    return _Trickle(data)


class RawServer:
    """Answers each request with the next scripted answer; use as a context manager."""

    def __init__(self, *answers: object, tls: ssl.SSLContext | None = None) -> None:
        self._answers: deque[object] = deque(answers)
        self._tls = tls
        self._lock = threading.Condition()
        self.requests: list[bytes] = []  # raw bytes of each request, head and body
        self.accepted = 0  # connections accepted (TLS: handshakes done)
        self.client_closes = 0  # connections the client closed
        self.handshake_failures = 0
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="RawServer", daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def script(self, *answers: object) -> None:
        with self._lock:
            self._answers.extend(answers)

    def wait_for(self, condition: Callable[[RawServer], bool], timeout: float = 5.0) -> None:
        """Block until `condition(server)` holds; AssertionError after `timeout` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: condition(self), timeout):
                raise AssertionError("the server never reached the expected state")

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    # -- internals ---------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        try:
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    self._changed("handshake_failures")
                    return
                with self._lock:
                    self._sockets.add(sock)
            self._changed("accepted")
            self._exchange(sock)
        except OSError:
            pass
        finally:
            sock.close()

    def _exchange(self, sock: socket.socket) -> None:
        buffer = bytearray()
        while True:
            request = _read_request(sock, buffer)
            if request is None:
                if not self._stopped.is_set():
                    self._changed("client_closes")
                return
            with self._lock:
                self.requests.append(request)
                answer = self._answers.popleft() if self._answers else CLOSE
                self._lock.notify_all()
            if isinstance(answer, bytes):
                sock.sendall(answer)
            elif isinstance(answer, _Trickle):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(answer.data)):
                    sock.sendall(answer.data[i : i + 1])
                    time.sleep(0.0005)  # let the client read each byte on its own
            elif isinstance(answer, _Close):
                sock.sendall(answer.data)
                return
            elif isinstance(answer, _Stream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for chunk in answer.chunks:
                    if self._stopped.wait(answer.pause) if answer.pause else self._stopped.is_set():
                        return
                    sock.sendall(chunk)
                if answer.reset:  # SO_LINGER 0: close() sends a RST instead of a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            else:  # HANG: until the client closes the connection
                while sock.recv(65536):
                    pass
                if not self._stopped.is_set():
                    self._changed("client_closes")
                return

    def _changed(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
            self._lock.notify_all()


def _read_request(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """One whole request from `sock` (None when the client closed the connection)."""
    head_end = _fill_until(sock, buffer, lambda: buffer.find(b"\r\n\r\n"))
    if head_end < 0:
        return None
    head = bytes(buffer[: head_end + 4])
    del buffer[: head_end + 4]
    fields = dict(
        line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
    )  # a request from our clients has no repeated framing headers
    fields = {k.strip().lower(): v.strip().lower() for k, v in fields.items()}
    if fields.get(b"transfer-encoding") == b"chunked":
        end = _fill_until(sock, buffer, lambda: buffer.find(b"0\r\n\r\n"))
        body = bytes(buffer[: end + 5])
    else:
        length = int(fields.get(b"content-length", b"0"))
        _fill_until(sock, buffer, lambda: length if len(buffer) >= length else -1)
        body = bytes(buffer[:length])
    del buffer[: len(body)]
    return head + body


def _fill_until(sock: socket.socket, buffer: bytearray, found: Callable[[], int]) -> int:
    """Receive into `buffer` until `found()` is not negative; -1 when the client closed."""
    while (where := found()) < 0:
        data = sock.recv(65536)
        if not data:
            return -1
        buffer += data
    return where
