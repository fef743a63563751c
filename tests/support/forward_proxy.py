"""A forwarding HTTP proxy on 127.0.0.1 for tests: CONNECT tunnels and absolute-URI requests.

It records every request that passed through it, so a test can prove a client used it. Host
names can be routed to local servers (``routes={"api.stepchain.test": ("127.0.0.1", port)}``):
a name under the reserved ``.test`` domain never resolves, so a request for it reaches the
server only through the proxy. Other hosts are connected to as named.

* ``CONNECT host:port``: answers ``200 Connection established`` and relays bytes both ways
  (TLS passes through untouched) until either side closes.
* ``METHOD http://host:port/path``: sends ``METHOD /path`` upstream with the client's headers
  (``Proxy-*`` dropped, ``Connection: close``) and a Content-Length body, relays the answer
  until the upstream closes, then closes the client's connection.

Standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["ForwardProxy", "ProxiedRequest"]


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy handled: ``CONNECT`` with ``host:port``, or a method and URL."""

    method: str
    target: str
    headers: dict[str, str]  # lower-cased names


class ForwardProxy:
    """A forwarding proxy on 127.0.0.1; use as a context manager."""

    def __init__(self, routes: dict[str, tuple[str, int]] | None = None) -> None:
        self.routes = dict(routes or {})
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="ForwardProxy", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for HTTP_PROXY / HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ForwardProxy:
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

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        upstream: socket.socket | None = None
        try:
            head, rest = _read_head(client)
            if head is None:
                return
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            headers = dict(_header(line) for line in lines if ":" in line)
            with self._lock:
                self.requests.append(ProxiedRequest(method, target, headers))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = self._track(self._connect(host, int(port)))
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                self._relay(client, upstream)
                return
            url = urlsplit(target)
            upstream = self._track(self._connect(url.hostname or "", url.port or 80))
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            kept = [
                line
                for line in lines
                if line and not line.lower().startswith(("proxy-", "connection:"))
            ]
            upstream.sendall(
                f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
                + "".join(f"{line}\r\n" for line in kept).encode("latin-1")
                + b"Connection: close\r\n\r\n"
            )
            length = int(headers.get("content-length", "0"))
            body = bytearray(rest)
            while len(body) < length:
                data = client.recv(65536)
                if not data:
                    return
                body += data
            upstream.sendall(bytes(body[:length]))
            while data := upstream.recv(65536):
                client.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _connect(self, host: str, port: int) -> socket.socket:
        return socket.create_connection(self.routes.get(host, (host, port)), timeout=10)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes."""

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        upstream.settimeout(None)
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(timeout=5)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """The request head (without its blank line) and any bytes read past it."""
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        data = sock.recv(65536)
        if not data:
            return None, b""
        buffer += data
    return bytes(buffer[:end]), bytes(buffer[end + 4 :])


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()
