"""A scriptable fake OpenAI server for tests.

The real ``openai`` SDK talks to it over real HTTP on ``127.0.0.1`` (the SDK uses httpx2, so
transport-level mocking such as respx does not apply), or over HTTPS with ``tls=`` a server
``ssl.SSLContext`` (e.g. one a ``trustme`` CA issued a certificate into). Standard library only.

Quick start::

    from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall

    with FakeOpenAI() as fake:
        fake.script(Reply.text("hello", input_tokens=12, output_tokens=3))
        client = openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0)
        client.responses.create(model="m", input="hi").output_text  # -> "hello"
        fake.requests_to("/v1/responses")[0].json["input"]  # -> "hi"

Endpoints (non-streaming only):

* ``POST /v1/responses``         -- Responses API (disable with ``responses_api=False``)
* ``POST /v1/chat/completions``  -- Chat Completions (disable with ``chat_api=False``)
* ``GET  /v1/models``            -- a small model list
* anything else                  -- OpenAI-shaped 404

How a reply is chosen for an enabled endpoint, first match wins:

1. the endpoint's own queue (``fake.script(..., endpoint="responses" | "chat")``);
2. the global queue (``fake.script(...)``), shared by both endpoints, consumed in order;
3. the ``responder`` callable (``FakeOpenAI(responder=fn)`` or ``fake.responder = fn``),
   ``fn(request_json) -> Reply | str | dict | list | None``; ``None`` falls through;
4. the ``default`` reply (``Reply.text("ok")`` unless given).

A script item may itself be a callable like the responder (a one-shot dynamic answer).
``str`` means ``Reply.text(s)``; ``dict``/``list`` mean ``Reply.json(obj)``.

A request to a disabled endpoint is recorded, answered with ``missing_status`` (404) and an
OpenAI-shaped error body, and consumes nothing from the queues.

Every reply is endpoint-agnostic: the same ``Reply`` renders as a Responses object on
``/v1/responses`` and as a ChatCompletion on ``/v1/chat/completions``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.rate_buckets import RateBuckets, token_cost

__all__ = [
    "FakeOpenAI",
    "RecordedRequest",
    "Reply",
    "ToolCall",
    "request_text",
    "serve",
]

RESPONSES_PATH = "/v1/responses"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

Responder = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# Script items
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One function call the fake model makes.

    ``arguments`` may be a dict (JSON-encoded for the wire) or an already-encoded string
    (sent verbatim, so malformed arguments can be tested). ``call_id`` defaults to a
    deterministic ``call_<n>`` id assigned by the server.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass(frozen=True)
class Reply:
    """A scripted answer. Build with the classmethods, not the constructor.

    ``kind`` is one of ``"answer"`` (text and/or tool calls), ``"error"`` (HTTP error with an
    OpenAI error body), ``"raw"`` (arbitrary status/body), ``"hang"`` (never answer),
    ``"disconnect"`` (close the socket without answering).
    Every kind honours ``delay`` (seconds slept before answering; cut short by ``stop()``).
    """

    kind: str = "answer"
    message: str | None = None  # assistant text (None: no message item / null content)
    calls: tuple[ToolCall, ...] = ()
    input_tokens: int = 10
    output_tokens: int = 5
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    include_usage: bool = True
    model: str | None = None
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    hang_seconds: float | None = None

    # -- answers ----------------------------------------------------------------------------

    @classmethod
    def text(
        cls,
        text: str,
        *,
        input_tokens: int = 10,
        output_tokens: int = 5,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        include_usage: bool = True,
        model: str | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """A plain assistant text answer."""
        return cls(
            message=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            reasoning_tokens=reasoning_tokens,
            include_usage=include_usage,
            model=model,
            delay=delay,
        )

    @classmethod
    def json(cls, obj: Any, **kwargs: Any) -> Reply:
        """A structured answer: the assistant text is ``json.dumps(obj)``. Same kwargs as text."""
        return cls.text(json.dumps(obj), **kwargs)

    @classmethod
    def tool_calls(
        cls,
        *calls: ToolCall,
        text: str | None = None,
        input_tokens: int = 10,
        output_tokens: int = 5,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        include_usage: bool = True,
        model: str | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """One reply carrying one or more function calls (optionally with some text too)."""
        if not calls:
            raise ValueError("tool_calls needs at least one ToolCall")
        return cls(
            message=text,
            calls=tuple(calls),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            reasoning_tokens=reasoning_tokens,
            include_usage=include_usage,
            model=model,
            delay=delay,
        )

    @classmethod
    def tool_call(
        cls,
        name: str,
        arguments: dict[str, Any] | str | None = None,
        *,
        call_id: str | None = None,
        **kwargs: Any,
    ) -> Reply:
        """Shortcut for a reply with a single function call."""
        call = ToolCall(name, {} if arguments is None else arguments, call_id)
        return cls.tool_calls(call, **kwargs)

    # -- failures ---------------------------------------------------------------------------

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """An HTTP error with an OpenAI-shaped body ``{"error": {message, type, param, code}}``."""
        return cls(
            kind="error",
            status=status,
            error_message=message or f"Fake error {status}",
            error_type=type or ("server_error" if status >= 500 else "invalid_request_error"),
            error_code=code,
            error_param=param,
            headers=tuple((headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def rate_limit(
        cls,
        retry_after: float | str | None = 1,
        *,
        retry_after_ms: float | None = None,
        message: str = "Rate limit reached for requests",
        delay: float = 0.0,
    ) -> Reply:
        """429 with ``Retry-After: <retry_after>`` (omitted when None) and optional
        ``retry-after-ms``."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = _num(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = _num(retry_after_ms)
        return cls.error(
            429,
            message,
            type="requests",
            code="rate_limit_exceeded",
            headers=headers,
            delay=delay,
        )

    @classmethod
    def server_error(cls, status: int = 500, message: str = "The server had an error") -> Reply:
        return cls.error(status, message, type="server_error")

    @classmethod
    def unauthorized(cls, message: str = "Incorrect API key provided") -> Reply:
        return cls.error(401, message, type="invalid_request_error", code="invalid_api_key")

    @classmethod
    def bad_request(cls, message: str = "Invalid request", *, param: str | None = None) -> Reply:
        return cls.error(400, message, type="invalid_request_error", param=param)

    @classmethod
    def not_found(cls, message: str = "Not found") -> Reply:
        return cls.error(404, message, type="invalid_request_error", code="unknown_url")

    @classmethod
    def malformed(
        cls, body: bytes | str = b'{"id": "resp_broken", "output": [', **kw: Any
    ) -> Reply:
        """HTTP 200, ``Content-Type: application/json``, but the body is not valid JSON."""
        data = body.encode() if isinstance(body, str) else body
        return cls(kind="raw", status=200, body=data, **kw)

    @classmethod
    def raw(
        cls,
        status: int,
        body: bytes | str,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """Any status and body, sent verbatim (e.g. a text/plain 404 like Ollama's)."""
        data = body.encode() if isinstance(body, str) else body
        return cls(
            kind="raw",
            status=status,
            body=data,
            content_type=content_type,
            headers=tuple((headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def hang(cls, seconds: float | None = None) -> Reply:
        """Accept the request and never answer: until ``stop()`` (or for ``seconds``, after
        which the connection is closed without a response)."""
        return cls(kind="hang", hang_seconds=seconds)

    @classmethod
    def disconnect(cls, delay: float = 0.0) -> Reply:
        """Read the request, then close the connection without any response."""
        return cls(kind="disconnect", delay=delay)

    # -- modifiers --------------------------------------------------------------------------

    def with_delay(self, seconds: float) -> Reply:
        """Same reply, answered after sleeping ``seconds``."""
        return replace(self, delay=seconds)

    def with_headers(self, **headers: str) -> Reply:
        """Same reply with extra response headers (``x_request_id="..."`` -> ``x-request-id``)."""
        extra = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        return replace(self, headers=self.headers + extra)


def _num(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------
# Recorded requests
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request the server received (recorded before any delay/hang)."""

    method: str
    path: str  # without query string
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any  # parsed body, or None when empty / not JSON
    received_at: float
    reply: Reply | None = None  # what was (or is being) served; None for routing errors

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    @property
    def text(self) -> str:
        """All prompt text in the request (see :func:`request_text`)."""
        return request_text(self.json)


def request_text(body: Any) -> str:
    """Concatenate the prompt text of a Responses or Chat request body, newline-separated.

    Covers ``instructions``, ``input`` (string or item list, including ``function_call_output``
    outputs) and chat ``messages`` (string or content-part list, tool messages included).
    Handy for deterministic echo responders.
    """
    if not isinstance(body, dict):
        return ""
    parts: list[str] = []
    if isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])

    def content_text(content: Any) -> None:
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, str):
                    parts.append(part)
                elif isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])

    inp = body.get("input")
    if isinstance(inp, str):
        parts.append(inp)
    elif isinstance(inp, list):
        for item in inp:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call_output":
                content_text(item.get("output"))
            else:
                content_text(item.get("content"))
    for msg in body.get("messages") or []:
        if isinstance(msg, dict):
            content_text(msg.get("content"))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # the default backlog of 5 resets bursts of concurrent requests
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out close their sockets; never print tracebacks or raise.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: never hold one back

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        tls = self.server.fake.tls
        if tls is not None:  # the handshake happens here, in the connection's own thread
            try:
                self.request = tls.wrap_socket(self.request, server_side=True)
            except (OSError, ssl.SSLError):
                self.server.fake._handshake_failed()
                raise
        super().setup()
        self.server.fake._opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):  # the server closes only the raw socket,
                self.request.close()  # which the TLS socket took over
            self.server.fake._closed(self)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        # One request per connection unless keep_alive: no idle connection outlives a test.
        if not fake.keep_alive:
            self.close_connection = True
        fake._enter(self)
        try:
            fake._handle(self)
        except OSError:
            pass  # the client went away (timed out, disconnected) or stop() closed the socket
        except Exception as exc:  # a bug in a responder / script callable
            fake._record_error(exc)
            with contextlib.suppress(OSError):
                self._send(
                    500,
                    _dumps(
                        {
                            "error": {
                                "message": f"FakeOpenAI internal error: {exc!r}",
                                "type": "fake_server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    ),
                )
        finally:
            fake._leave(self)

    # -- writing helpers used by FakeOpenAI -------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("x-request-id", f"req_fake_{id(self):x}")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class FakeOpenAI:
    """A real HTTP server on 127.0.0.1 speaking enough of the OpenAI API for tests.

    Use as a context manager or call ``start()`` / ``stop()``. Thread-safe: scripting and
    inspection may happen from any thread while requests are served concurrently.
    """

    def __init__(
        self,
        *,
        responses_api: bool = True,
        chat_api: bool = True,
        missing_status: int = 404,
        default: Reply | str | None = None,
        responder: Responder | None = None,
        api_key: str | None = None,
        models: Iterable[str] = ("gpt-fake",),
        keep_alive: bool = False,
        tls: ssl.SSLContext | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        limit_window: float = 1.0,
    ) -> None:
        """
        :param responses_api: serve ``/v1/responses``; False emulates a chat-only server.
        :param chat_api: serve ``/v1/chat/completions``.
        :param missing_status: status for disabled endpoints (404, or 405 for some servers).
        :param default: reply when queues are empty and no responder answers.
        :param responder: ``fn(request_json) -> Reply | str | dict | list | None``.
        :param api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
        :param models: ids listed by ``GET /v1/models``.
        :param keep_alive: keep a connection open for the client's next request (HTTP/1.1
            keep-alive, as api.openai.com does); by default every answer closes it.
        :param tls: a server-side TLS context: serve HTTPS (``url`` is then ``https://``).
        :param rpm: requests per minute per model (``tests.support.rate_buckets``): a request
            over it gets a 429 with ``retry-after-ms``/``Retry-After``; every answer carries
            ``x-ratelimit-*`` headers.
        :param tpm: tokens per minute per model (characters / 4 + max output tokens).
        :param limit_window: the seconds' worth of the limits the buckets hold.
        """
        self.responses_api = responses_api
        self.chat_api = chat_api
        self.missing_status = missing_status
        self.default: Reply = _coerce(default) if default is not None else Reply.text("ok")
        self.responder: Responder | None = responder
        self.api_key = api_key
        self.models = list(models)
        self.keep_alive = keep_alive
        self.tls = tls
        self.handshake_failures = 0  # TLS handshakes that failed (e.g. the client's CA check)
        self.limits = RateBuckets(rpm, tpm, limit_window) if rpm or tpm else None

        self._lock = threading.Lock()
        self._queues: dict[str | None, deque[Any]] = {
            None: deque(),
            "responses": deque(),
            "chat": deque(),
        }
        self._requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []  # exceptions raised by responders/callables
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._max_in_flight = 0
        self._handlers: set[_Handler] = set()
        self._connections: set[_Handler] = set()  # open connections, idle or not
        self._stop_event = threading.Event()
        self._request_cond = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name=f"FakeOpenAI:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving. Releases hung/delayed handlers, so this returns promptly."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        with self._lock:
            handlers = list(self._handlers | self._connections)
        for handler in handlers:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with self._lock:
                if not self._handlers:
                    break
            time.sleep(0.01)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with ``tls``; no ``/v1``)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (or https) -- pass as ``base_url`` / ``OPENAI_BASE_URL``."""
        return f"{self.url}/v1"

    def env(self, api_key: str = "test-key") -> dict[str, str]:
        """Environment variables pointing an OpenAI client at this server."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": api_key}

    # -- scripting --------------------------------------------------------------------------

    def script(
        self, *replies: Reply | str | dict | list | Responder, endpoint: str | None = None
    ) -> FakeOpenAI:
        """Queue replies, consumed one per request in order.

        ``endpoint=None`` -> the global queue (any endpoint); ``"responses"`` / ``"chat"`` ->
        that endpoint only (checked before the global queue). Returns ``self``.
        """
        if endpoint not in (None, "responses", "chat"):
            raise ValueError(f"endpoint must be None, 'responses' or 'chat', not {endpoint!r}")
        with self._lock:
            self._queues[endpoint].extend(replies)
        return self

    def script_responses(self, *replies: Any) -> FakeOpenAI:
        return self.script(*replies, endpoint="responses")

    def script_chat(self, *replies: Any) -> FakeOpenAI:
        return self.script(*replies, endpoint="chat")

    @property
    def pending(self) -> int:
        """Number of scripted replies not consumed yet (all queues)."""
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def reset(self) -> None:
        """Forget recorded requests, scripted replies and concurrency stats."""
        with self._lock:
            for q in self._queues.values():
                q.clear()
            self._requests.clear()
            self.errors.clear()
            self._max_in_flight = self._in_flight

    # -- inspection -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Requests to ``path``: ``"/v1/responses"``, or a short form ``"responses"``,
        ``"chat"``, ``"chat/completions"``."""
        wanted = _normalise_path(path)
        return [r for r in self.requests if r.path == wanted]

    @property
    def responses_requests(self) -> list[RecordedRequest]:
        return self.requests_to(RESPONSES_PATH)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return self.requests_to(CHAT_PATH)

    @property
    def last_request(self) -> RecordedRequest:
        reqs = self.requests
        if not reqs:
            raise AssertionError("FakeOpenAI received no requests")
        return reqs[-1]

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def open_connections(self) -> int:
        """Connections open right now, idle (kept alive) or not."""
        with self._lock:
            return len(self._connections)

    @property
    def max_in_flight(self) -> int:
        """Peak number of requests being handled at the same time (for concurrency tests)."""
        with self._lock:
            return self._max_in_flight

    def wait_for_requests(
        self, n: int, timeout: float = 5.0, path: str | None = None
    ) -> list[RecordedRequest]:
        """Block until at least ``n`` requests (to ``path`` if given) arrived; else raise."""
        wanted = _normalise_path(path) if path else None
        deadline = time.monotonic() + timeout
        with self._request_cond:
            while True:
                got = [r for r in self._requests if wanted is None or r.path == wanted]
                if len(got) >= n:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {n} requests, got {len(got)} in {timeout}s")
                self._request_cond.wait(remaining)

    # -- internals --------------------------------------------------------------------------

    def _enter(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.add(handler)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _opened(self, handler: _Handler) -> None:
        with self._lock:
            self._connections.add(handler)

    def _handshake_failed(self) -> None:
        with self._lock:
            self.handshake_failures += 1

    def _closed(self, handler: _Handler) -> None:
        with self._lock:
            self._connections.discard(handler)

    def _leave(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.discard(handler)
            self._in_flight -= 1

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length > 0 else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        req = RecordedRequest(
            method=h.command,
            path=split.path.rstrip("/") or "/",
            query=split.query,
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            json=parsed,
            received_at=time.time(),
        )
        with self._request_cond:
            self._requests.append(req)
            self._request_cond.notify_all()

        endpoint = {RESPONSES_PATH: "responses", CHAT_PATH: "chat"}.get(req.path)

        if self.api_key is not None and req.headers.get("authorization") != (
            f"Bearer {self.api_key}"
        ):
            self._send_reply(h, req, Reply.unauthorized(), endpoint)
            return

        if req.path == MODELS_PATH and h.command == "GET":
            data = [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in self.models
            ]
            h._send(200, _dumps({"object": "list", "data": data}))
            return

        enabled = {"responses": self.responses_api, "chat": self.chat_api}
        if endpoint is None or h.command != "POST" or not enabled[endpoint]:
            status = self.missing_status if endpoint is not None else 404
            if endpoint is not None and enabled[endpoint] and h.command != "POST":
                status = 405
            self._send_error(
                h,
                Reply.error(
                    status,
                    f"Invalid URL ({h.command} {req.path})",
                    type="invalid_request_error",
                ),
            )
            return

        if not isinstance(parsed, dict):
            self._send_reply(h, req, Reply.bad_request("We could not parse the JSON body"), None)
            return

        limit_headers: list[tuple[str, str]] = []
        if self.limits is not None:
            most = parsed.get("max_output_tokens") or parsed.get("max_tokens")
            cost = token_cost(request_text(parsed), most if isinstance(most, int) else None)
            admitted, limit_headers = self.limits.admit(str(parsed.get("model")), cost)
            if not admitted:
                refusal = Reply.error(
                    429,
                    f"Rate limit reached for {parsed.get('model')}",
                    type="requests",
                    code="rate_limit_exceeded",
                    headers=dict(limit_headers),
                )
                self._send_reply(h, req, refusal, endpoint)
                return
        reply = self._pick_reply(endpoint, parsed)
        if limit_headers:
            reply = replace(reply, headers=reply.headers + tuple(limit_headers))
        self._send_reply(h, req, reply, endpoint)

    def _pick_reply(self, endpoint: str, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._queues[endpoint]:
                item = self._queues[endpoint].popleft()
            elif self._queues[None]:
                item = self._queues[None].popleft()
            else:
                item = None
            responder = self.responder
        if item is not None:
            if callable(item) and not isinstance(item, Reply):
                item = item(body)
            if item is not None:
                return _coerce(item)
        if responder is not None:
            answer = responder(body)
            if answer is not None:
                return _coerce(answer)
        return self.default

    def _send_reply(
        self, h: _Handler, req: RecordedRequest, reply: Reply, endpoint: str | None
    ) -> None:
        req.reply = reply
        if reply.kind in ("hang", "disconnect"):
            h.close_connection = True  # no answer: the connection is not reused
        if reply.delay > 0 and self._stop_event.wait(reply.delay):
            return  # stopped while sleeping: just drop the connection
        if reply.kind == "hang":
            self._stop_event.wait(reply.hang_seconds)
            return
        if reply.kind == "disconnect":
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.kind == "error":
            self._send_error(h, reply)
            return
        if reply.kind == "raw":
            h._send(reply.status, reply.body, reply.content_type, reply.headers)
            return
        if endpoint == "responses":
            payload = self._render_responses(req.json, reply)
        else:
            payload = self._render_chat(req.json, reply)
        h._send(200, _dumps(payload), headers=reply.headers)

    def _send_error(self, h: _Handler, reply: Reply) -> None:
        body = {
            "error": {
                "message": reply.error_message,
                "type": reply.error_type,
                "param": reply.error_param,
                "code": reply.error_code,
            }
        }
        h._send(reply.status, _dumps(body), headers=reply.headers)

    def _call_ids(self, reply: Reply) -> list[str]:
        return [c.call_id or self._next_id("call") for c in reply.calls]

    def _render_responses(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if reply.message is not None:
            output.append(
                {
                    "id": self._next_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [
                        {
                            "type": "output_text",
                            "text": reply.message,
                            "annotations": [],
                            "logprobs": [],
                        }
                    ],
                }
            )
        for call, call_id in zip(reply.calls, self._call_ids(reply), strict=True):
            output.append(
                {
                    "id": self._next_id("fc"),
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call_id,
                    "name": call.name,
                    "arguments": call.arguments_json,
                }
            )
        now = int(time.time())
        payload: dict[str, Any] = {
            "id": self._next_id("resp"),
            "object": "response",
            "created_at": now,
            "completed_at": now,
            "status": "completed",
            "model": reply.model or body.get("model") or "gpt-fake",
            "output": output,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions")
            if isinstance(body.get("instructions"), str)
            else None,
            "metadata": body.get("metadata") or {},
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "temperature": body.get("temperature"),
            "top_p": body.get("top_p"),
            "max_output_tokens": body.get("max_output_tokens"),
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store", True),
            "text": body.get("text") or {"format": {"type": "text"}},
            "truncation": body.get("truncation", "disabled"),
        }
        if reply.include_usage:
            payload["usage"] = {
                "input_tokens": reply.input_tokens,
                "input_tokens_details": {
                    "cached_tokens": reply.cached_tokens,
                    "cache_write_tokens": 0,
                },
                "output_tokens": reply.output_tokens,
                "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
                "total_tokens": reply.input_tokens + reply.output_tokens,
            }
        else:
            payload["usage"] = None
        return payload

    def _render_chat(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.message,
            "refusal": None,
            "annotations": [],
        }
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call, call_id in zip(reply.calls, self._call_ids(reply), strict=True)
            ]
        payload: dict[str, Any] = {
            "id": self._next_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model") or "gpt-fake",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls" if reply.calls else "stop",
                    "logprobs": None,
                    "message": message,
                }
            ],
            "system_fingerprint": "fp_fake",
        }
        if reply.include_usage:
            payload["usage"] = {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens + reply.output_tokens,
                "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
            }
        return payload


def _coerce(item: Any) -> Reply:
    if isinstance(item, Reply):
        return item
    if isinstance(item, str):
        return Reply.text(item)
    if isinstance(item, dict | list):
        return Reply.json(item)
    raise TypeError(f"cannot turn {type(item).__name__} into a Reply: {item!r}")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _normalise_path(path: str) -> str:
    if path.startswith("/"):
        return path.rstrip("/")
    short = {"responses": RESPONSES_PATH, "chat": CHAT_PATH, "models": MODELS_PATH}
    return short.get(path, "/v1/" + path.strip("/"))


@contextlib.contextmanager
def serve(*replies: Reply | str | dict | list | Responder, **kwargs: Any) -> Iterator[FakeOpenAI]:
    """Start a :class:`FakeOpenAI` (kwargs as for the constructor), queue ``replies`` on the
    global queue, yield it, stop it afterwards."""
    fake = FakeOpenAI(**kwargs)
    fake.script(*replies)
    with fake:
        yield fake
