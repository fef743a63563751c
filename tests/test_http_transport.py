"""`LeanTransport` held to the promises of its module docstring (stepchain.llm.http_transport).

Every test drives the real OpenAI SDK (or StepChain's `LLMClient`) over real sockets on
127.0.0.1: `FakeOpenAI` for API-shaped answers, `RawServer` (tests/support/raw_http.py) for
exact bytes on the wire and for counting the connections the server accepts and sees closed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai
import pytest
import trustme
from stepchain.errors import RetryableStepError
from stepchain.llm import http_transport
from stepchain.llm.client import LLMClient, ModelCall, shared_ssl_context
from stepchain.llm.http_transport import LeanTransport, proxy_in_env

from tests.support.fake_openai import FakeOpenAI, Reply, request_text
from tests.support.raw_http import CLOSE, HANG, RawServer, then_close, trickle

# urllib and httpx2 read these (upper or lower case); under CGI (REQUEST_METHOD) not HTTP_PROXY.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")
BIG = 5 * 1024 * 1024  # larger than any socket buffer: both sides must wait for the other


def answer(body: bytes = b"ok", status: str = "200 OK", *headers: str) -> bytes:
    """A response with a Content-Length."""
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


def lean_http_client(transport: LeanTransport | None = None) -> httpx2.AsyncClient:
    """The SDK's HTTP client as `LLMClient` builds it, over a LeanTransport."""
    return openai.DefaultAsyncHttpxClient(
        transport=transport or LeanTransport(tls_context=shared_ssl_context)
    )


def sdk(base_url: str, http_client: httpx2.AsyncClient | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="test",
        base_url=base_url,
        max_retries=0,
        http_client=http_client or lean_http_client(),
    )


def with_client(
    base_url: str,
    scenario: Callable[[openai.AsyncOpenAI], Awaitable[Any]],
    http_client: httpx2.AsyncClient | None = None,
) -> Any:
    """Run `scenario(client)` in a fresh event loop, closing the client afterwards."""

    async def go() -> Any:
        client = sdk(base_url, http_client)
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(go())


async def get(client: openai.AsyncOpenAI, path: str = "/x", **options: Any) -> bytes:
    return await client.get(path, cast_to=bytes, options=options)


def get_twice(server: RawServer) -> tuple[bytes, bytes]:
    """Two GETs in a row over one client; the second shows what the first left behind."""

    async def scenario(client: openai.AsyncOpenAI) -> tuple[bytes, bytes]:
        return await get(client), await get(client)

    return with_client(server.url, scenario)


def fails_then_recovers(server: RawServer, warm_up: bool = False, **options: Any) -> Any:
    """The SDK error of a GET (after one that answers `first` if `warm_up`), checking that the
    next GET over the same client answers `after`."""

    async def scenario(client: openai.AsyncOpenAI) -> openai.APIError:
        if warm_up:
            assert await get(client) == b"first"
        with pytest.raises(openai.APIError) as failure:
            await get(client, **options)
        assert await get(client) == b"after"
        return failure.value

    return with_client(server.url, scenario)


async def server_sees(server: RawServer, condition: Callable[[RawServer], bool]) -> None:
    """Wait, without blocking the event loop, until `condition(server)` holds."""
    await asyncio.to_thread(server.wait_for, condition)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def complete(base_url: str, *prompts: str, timeout: float | None = None) -> list[str]:
    """One turn per prompt, one after another, through one StepChain LLMClient; their texts."""

    async def go() -> list[str]:
        client = LLMClient("test", base_url)
        texts = []
        try:
            for prompt in prompts or ["hi"]:
                message = {"role": "user", "content": prompt}
                call = ModelCall(model="m", messages=[message], timeout=timeout)
                texts.append((await client.complete(call)).text)
            return texts
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def no_proxy_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the machine's proxy settings, these tests talk to 127.0.0.1 directly."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


# -- 1. request bytes ---------------------------------------------------------------------------
def test_a_request_is_the_bytes_the_sdk_default_transport_sends():
    body = {"model": "m", "input": "héllo ✓", "n": [1, 2.5, None], "nested": {"a": True}}

    async def scenario(client: openai.AsyncOpenAI) -> None:
        options = {"idempotency_key": "same-key"}
        await client.post("/responses?x=1&y=%C3%BC", cast_to=bytes, body=body, options=options)
        await client.get("/models?limit=2", cast_to=bytes)

    with RawServer(*[answer(b"{}")] * 4) as server:
        with_client(server.url + "/v1", scenario, openai.DefaultAsyncHttpxClient())
        with_client(server.url + "/v1", scenario)
    default_post, default_get, lean_post, lean_get = server.requests
    assert lean_post == default_post
    assert lean_get == default_get
    head, _, sent = lean_post.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/responses?x=1&y=%C3%BC HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "authorization: Bearer test" in lines
    assert f"Content-Length: {len(sent)}" in lines
    assert sent == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    assert lean_get.startswith(b"GET /v1/models?limit=2 HTTP/1.1\r\n")
    assert lean_get.endswith(b"\r\n\r\n")  # no body


def test_a_streamed_request_body_goes_chunked_as_with_the_default_transport():
    async def parts():
        yield b'{"first": 1,'
        yield b' "second": 2}'

    async def scenario(client: openai.AsyncOpenAI) -> None:
        options = {"idempotency_key": "same-key"}
        await client.post("/upload", cast_to=bytes, content=parts(), options=options)

    with RawServer(answer(b"{}"), answer(b"{}")) as server:
        with_client(server.url, scenario, openai.DefaultAsyncHttpxClient())
        with_client(server.url, scenario)
    default, lean = server.requests
    assert lean == default
    assert b"Transfer-Encoding: chunked" in lean
    assert lean.endswith(b'\r\n\r\nc\r\n{"first": 1,\r\nd\r\n "second": 2}\r\n0\r\n\r\n')


def test_a_request_body_larger_than_the_socket_buffers_arrives_whole():
    text = "x" * BIG
    with FakeOpenAI() as fake:
        fake.responder = lambda body: f"{len(request_text(body))} characters"
        assert complete(fake.base_url, text) == [f"{BIG} characters"]
        assert fake.last_request.json["input"][0]["content"] == text


# -- 2. response bodies -------------------------------------------------------------------------
def test_a_body_by_content_length_is_read_exactly_and_the_connection_reused():
    with RawServer(answer(b"first"), answer(b"second")) as server:
        assert get_twice(server) == (b"first", b"second")
    assert server.accepted == 1


def test_status_reason_and_headers_reach_the_sdk_as_sent():
    sent = answer(
        b'{"id": 1}',
        "201 Created",
        "Content-Type: application/json",
        "Set-Cookie: a=1",
        "Set-Cookie: b=2",
        "X-Spaced:   padded value\t",
        "X-Colons: http://example.com:80/",
    )

    async def scenario(client: openai.AsyncOpenAI) -> httpx2.Response:
        return await client.get("/x", cast_to=httpx2.Response)

    with RawServer(sent) as server:
        response = with_client(server.url, scenario)
    assert (response.status_code, response.reason_phrase) == (201, "Created")
    assert response.http_version == "HTTP/1.1"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-spaced"] == "padded value"
    assert response.headers["x-colons"] == "http://example.com:80/"
    assert response.json() == {"id": 1}


def test_a_chunked_body_with_extensions_and_trailers_is_joined_and_the_connection_reused():
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"1;name=value\r\n \r\n"
        b'A; quoted="a;b"\r\nchunked wo\r\n'
        b"3\r\nrld\r\n"
        b"0\r\nX-Checksum: 42\r\nX-Other: yes\r\n\r\n"
    )
    with RawServer(chunked, answer(b"next")) as server:
        assert get_twice(server) == (b"hello chunked world", b"next")
    assert server.accepted == 1


def test_a_body_without_length_runs_to_the_close_and_the_next_request_reconnects():
    to_close = then_close(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it\r\nuntil EOF")
    with RawServer(to_close, answer(b"next")) as server:
        assert get_twice(server) == (b"all of it\r\nuntil EOF", b"next")
    assert server.accepted == 2


def test_a_gzip_body_is_decoded():
    data = json.dumps({"answer": "compressed " * 100}).encode()
    packed = answer(
        gzip.compress(data), "200 OK", "Content-Type: application/json", "Content-Encoding: gzip"
    )

    async def scenario(client: openai.AsyncOpenAI) -> tuple[Any, httpx2.Response]:
        return await client.get("/x", cast_to=object), await client.get(
            "/x", cast_to=httpx2.Response
        )

    with RawServer(packed, packed) as server:
        decoded, response = with_client(server.url, scenario)
    assert decoded == json.loads(data)
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == data


def test_a_response_body_larger_than_the_socket_buffers_arrives_whole():
    big = bytes(range(256)) * (BIG // 256)
    with RawServer(answer(big), answer(b"next")) as server:
        assert get_twice(server) == (big, b"next")
    assert server.accepted == 1


def test_head_204_and_304_answers_have_no_body_whatever_their_headers_say():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/plain\r\n\r\n"
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    not_modified = b'HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: "v1"\r\n\r\n'

    http = lean_http_client()  # HEAD and a 304 straight through it, the rest through the SDK

    async def scenario(client: openai.AsyncOpenAI) -> list[Any]:
        head = await http.head(server.url + "/x")
        empty = await client.post("/x", cast_to=bytes)
        unchanged = await http.get(server.url + "/x")
        return [head, empty, unchanged, await get(client)]

    with RawServer(head, no_content, not_modified, answer(b"next")) as server:
        head_response, empty, unchanged, after = with_client(server.url, scenario, http)
    assert (head_response.status_code, head_response.content) == (200, b"")
    assert head_response.headers["content-length"] == "1234"
    assert empty == b""
    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["etag"] == '"v1"'
    assert after == b"next"
    assert server.accepted == 1


def test_an_answer_arriving_one_byte_at_a_time_is_framed_the_same():
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"
    )

    async def scenario(client: openai.AsyncOpenAI) -> list[bytes]:
        return [await get(client) for _ in range(3)]

    answers = [trickle(interim + answer(b"length")), trickle(chunked), answer(b"next")]
    with RawServer(*answers) as server:
        assert with_client(server.url, scenario) == [b"length", b"abc", b"next"]
    assert server.accepted == 1


def test_a_100_continue_before_the_answer_is_skipped():
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    with RawServer(interim + answer(b"final", "201 Created"), answer(b"next")) as server:
        assert get_twice(server) == (b"final", b"next")
    assert server.accepted == 1


# -- 3. keep-alive ------------------------------------------------------------------------------
def test_sequential_requests_reuse_one_connection():
    async def scenario(client: openai.AsyncOpenAI) -> list[bytes]:
        return [await get(client) for _ in range(5)]

    with RawServer(*(answer(b"%d" % i) for i in range(5))) as server:
        assert with_client(server.url, scenario) == [b"0", b"1", b"2", b"3", b"4"]
    assert server.accepted == 1
    assert len(server.requests) == 5


@pytest.mark.parametrize(
    "closing",
    [
        answer(b"first", "200 OK", "Connection: close"),
        answer(b"first", "200 OK", "connection: Close"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nfirst",
    ],
)
def test_connection_close_from_the_server_makes_the_next_request_open_a_new_one(closing):
    async def scenario(client: openai.AsyncOpenAI) -> tuple[bytes, bytes]:
        first = await get(client)
        await server_sees(server, lambda s: s.client_closes == 1)  # the client closed it
        return first, await get(client)

    with RawServer(closing, answer(b"next")) as server:
        assert with_client(server.url, scenario) == (b"first", b"next")
    assert server.accepted == 2


def test_a_connection_close_among_other_connection_tokens_still_closes():
    listed = answer(b"first", "200 OK", "Connection: keep-alive, close")
    with RawServer(listed, answer(b"next")) as server:
        assert get_twice(server) == (b"first", b"next")
    assert server.accepted == 2


def test_an_answer_with_bare_lf_line_ends_is_read_and_the_connection_reused():
    bare = b"HTTP/1.1 200 OK\nX-Old: style\nContent-Length: 5\n\nfirst"
    chunked_bare = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n4\nnext\n0\n\n"
    with RawServer(bare, chunked_bare) as server:
        assert get_twice(server) == (b"first", b"next")
    assert server.accepted == 1


def test_an_http_1_0_keep_alive_answer_keeps_the_connection():
    kept = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nfirst"
    with RawServer(kept, answer(b"next")) as server:
        assert get_twice(server) == (b"first", b"next")
    assert server.accepted == 1


def test_bytes_after_an_answer_make_its_connection_unfit_for_the_next_request():
    timeout_notice = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    with RawServer(answer(b"first") + timeout_notice, answer(b"next")) as server:
        assert get_twice(server) == (b"first", b"next")
    assert server.accepted == 2


def test_each_server_has_its_own_idle_connections():
    async def scenario(client: openai.AsyncOpenAI) -> list[bytes]:
        urls = [one.url, two.url, one.url, two.url]
        return [await client.get(f"{url}/x", cast_to=bytes) for url in urls]

    with (
        RawServer(answer(b"1a"), answer(b"1b")) as one,
        RawServer(answer(b"2a"), answer(b"2b")) as two,
    ):
        assert with_client(one.url, scenario) == [b"1a", b"2a", b"1b", b"2b"]
    assert (one.accepted, two.accepted) == (1, 1)


def test_concurrent_requests_each_get_their_own_connection_and_their_own_answer():
    everyone_in = threading.Barrier(10, timeout=5)

    def echo(body: dict[str, Any]) -> str:
        everyone_in.wait()  # only answers once all ten requests are in flight at once
        return f"echo: {request_text(body)}"

    async def scenario(client: openai.AsyncOpenAI) -> list[Any]:
        async def ask(i: int) -> Any:
            body = {"model": "m", "input": f"prompt {i}"}
            return await client.post("/responses", cast_to=object, body=body)

        return await asyncio.gather(*(ask(i) for i in range(10)))

    with FakeOpenAI(responder=echo, keep_alive=True) as fake:
        answers = with_client(fake.base_url, scenario)
        assert fake.max_in_flight == 10
    texts = [a["output"][0]["content"][0]["text"] for a in answers]
    assert texts == [f"echo: prompt {i}" for i in range(10)]


def test_an_idle_connection_older_than_keepalive_expiry_is_not_reused(monkeypatch):
    monkeypatch.setattr(http_transport, "KEEPALIVE_EXPIRY", 0.05)

    async def scenario(client: openai.AsyncOpenAI) -> tuple[bytes, bytes]:
        first = await get(client)
        await asyncio.sleep(0.1)
        second = await get(client)
        await server_sees(server, lambda s: s.client_closes == 1)  # the expired one was closed
        return first, second

    with RawServer(answer(b"first"), answer(b"next")) as server:
        assert with_client(server.url, scenario) == (b"first", b"next")
    assert server.accepted == 2


# -- 4. stale connections -----------------------------------------------------------------------
def test_a_connection_the_server_closed_while_idle_is_not_reused():
    with RawServer(then_close(answer(b"first")), answer(b"next")) as server:
        assert get_twice(server) == (b"first", b"next")
    assert server.accepted == 2
    assert len(server.requests) == 2


def test_a_stale_keep_alive_connection_is_retried_once_on_a_new_one():
    # The server's idle timeout fires as the second request arrives: it closes unanswered.
    async def scenario(client: openai.AsyncOpenAI) -> tuple[bytes, bytes]:
        first = await get(client)
        return first, await client.post("/x", cast_to=bytes, body={"input": "once more"})

    with RawServer(answer(b"first"), CLOSE, answer(b"retried")) as server:
        assert with_client(server.url, scenario) == (b"first", b"retried")
    _, stale, retried = server.requests
    assert retried == stale  # the same request, idempotency key included
    assert stale.startswith(b"POST /x HTTP/1.1\r\n")
    assert stale.endswith(b'\r\n\r\n{"input":"once more"}')
    assert server.accepted == 2


def test_the_retry_after_a_stale_connection_opens_a_new_one_rather_than_another_idle_one():
    async def scenario(client: openai.AsyncOpenAI) -> list[bytes]:
        two_idle = await asyncio.gather(get(client), get(client))
        return [*two_idle, await get(client)]

    with RawServer(answer(b"a"), answer(b"b"), CLOSE, answer(b"retried"), CLOSE) as server:
        first, second, third = with_client(server.url, scenario)
    assert sorted([first, second]) == [b"a", b"b"]  # whichever request the server read first
    assert third == b"retried"
    assert server.accepted == 3  # the retry did not go to the other, maybe as stale, idle one
    assert len(server.requests) == 4


def test_a_fresh_connection_closed_without_an_answer_is_a_connection_error_not_retried():
    with RawServer(CLOSE, answer(b"after")) as server:
        error = fails_then_recovers(server)
    assert type(error) is openai.APIConnectionError
    assert isinstance(error.__cause__, httpx2.RemoteProtocolError)
    assert len(server.requests) == 2  # one failed request, one after


def test_a_connection_closed_mid_answer_is_not_retried_even_when_it_was_reused():
    partial = then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    with RawServer(answer(b"first"), partial, answer(b"after")) as server:
        error = fails_then_recovers(server, warm_up=True)
    assert type(error) is openai.APIConnectionError
    assert len(server.requests) == 3


def test_through_llm_client_a_dropped_connection_is_a_retryable_cannot_reach_error():
    with FakeOpenAI() as fake:
        fake.script(Reply.disconnect(), "after")
        with pytest.raises(RetryableStepError) as failure:
            complete(fake.base_url)
        assert str(failure.value).startswith(f"cannot reach the LLM server at {fake.base_url}")
        assert len(fake.requests) == 1
        assert complete(fake.base_url) == ["after"]


def test_through_llm_client_a_stale_keep_alive_connection_is_retried():
    with FakeOpenAI(keep_alive=True) as fake:
        fake.script("first", Reply.disconnect(), "retried")
        assert complete(fake.base_url, "one", "two") == ["first", "retried"]
        _, stale, retried = fake.requests
    assert retried.text == stale.text == "two"


# -- 5. timeouts and failures -------------------------------------------------------------------
def test_a_hung_server_is_an_api_timeout_error_and_its_connection_is_closed():
    async def scenario(client: openai.AsyncOpenAI) -> openai.APITimeoutError:
        with pytest.raises(openai.APITimeoutError) as failure:
            await get(client, timeout=0.3)
        await server_sees(server, lambda s: s.client_closes == 1)
        assert await get(client) == b"after"
        return failure.value

    with RawServer(HANG, answer(b"after")) as server:
        error = with_client(server.url, scenario)
    assert type(error) is openai.APITimeoutError
    assert isinstance(error.__cause__, httpx2.ReadTimeout)
    assert server.accepted == 2


def test_through_llm_client_a_hung_server_is_a_retryable_timeout():
    with FakeOpenAI() as fake:
        fake.script(Reply.hang(), "after")
        with pytest.raises(RetryableStepError, match=r"^the LLM request to .* timed out$"):
            complete(fake.base_url, timeout=0.3)
        assert complete(fake.base_url) == ["after"]


def test_a_server_that_stops_reading_a_large_body_is_an_api_timeout_error():
    body = b"x" * (16 * 1024 * 1024)  # more than the kernel buffers on both sides hold

    async def scenario(client: openai.AsyncOpenAI) -> None:
        await client.post("/upload", cast_to=bytes, content=body, options={"timeout": 0.3})

    with socket.create_server(("127.0.0.1", 0)) as never_accepts:  # nobody reads
        url = f"http://127.0.0.1:{never_accepts.getsockname()[1]}"
        with pytest.raises(openai.APITimeoutError) as failure:
            with_client(url, scenario)
    assert isinstance(failure.value.__cause__, httpx2.WriteTimeout)


def test_a_server_that_accepts_no_connection_is_an_api_timeout_error():
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        queued = [socket.socket() for _ in range(4)]  # fill its accept queue: SYNs get dropped
        for sock in queued:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        try:
            with pytest.raises(openai.APITimeoutError) as failure:
                with_client(f"http://127.0.0.1:{port}", lambda client: get(client, timeout=0.3))
        finally:
            for sock in queued:
                sock.close()
    assert isinstance(failure.value.__cause__, httpx2.ConnectTimeout)


def test_a_refused_connection_is_an_api_connection_error():
    async def scenario(client: openai.AsyncOpenAI) -> openai.APIError:
        with pytest.raises(openai.APIConnectionError) as failure:
            await get(client)
        assert await client.get(f"{server.url}/x", cast_to=bytes) == b"after"
        return failure.value

    with RawServer(answer(b"after")) as server:
        error = with_client(f"http://127.0.0.1:{closed_port()}", scenario)
    assert type(error) is openai.APIConnectionError
    assert isinstance(error.__cause__, httpx2.ConnectError)


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
        b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: no name\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nbody\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nbody\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbody\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\nbody",
        # cut off mid-answer by the server closing the connection
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nTrail",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
def test_a_malformed_or_cut_off_answer_is_an_api_connection_error(head):
    with RawServer(then_close(head), answer(b"after")) as server:
        error = fails_then_recovers(server)
    assert type(error) is openai.APIConnectionError
    assert isinstance(error.__cause__, httpx2.RemoteProtocolError)
    assert len(server.requests) == 2


# -- 6. cancellation ----------------------------------------------------------------------------
def test_a_cancel_in_the_same_loop_step_as_the_read_timeout_stays_a_cancel():
    async def scenario(client: openai.AsyncOpenAI) -> bytes:
        task = asyncio.create_task(get(client, timeout=0.3))
        await server_sees(server, lambda s: len(s.requests) == 1)
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + 0.35, task.cancel)  # due just after the read timeout
        # Block the loop past both deadlines: the read timeout fires and the caller's cancel
        # arrives in the same turn of the loop. The caller asked for a cancel: a cancel it gets.
        time.sleep(0.5)
        with pytest.raises(asyncio.CancelledError):
            await task
        return await get(client)

    with RawServer(HANG, answer(b"after")) as server:
        assert with_client(server.url, scenario) == b"after"


def test_a_request_cut_short_by_wait_for_closes_its_connection():
    async def scenario(client: openai.AsyncOpenAI) -> bytes:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(get(client), 0.2)
        await server_sees(server, lambda s: s.client_closes == 1)
        return await get(client)

    with RawServer(HANG, answer(b"after")) as server:
        assert with_client(server.url, scenario) == b"after"
    assert server.accepted == 2


def test_a_cancelled_request_closes_its_connection_and_the_next_one_works():
    async def scenario(client: openai.AsyncOpenAI) -> bytes:
        await get(client)  # an idle connection to reuse: the cancelled request takes it
        task = asyncio.create_task(get(client))
        await server_sees(server, lambda s: len(s.requests) == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server_sees(server, lambda s: s.client_closes == 1)
        return await get(client)

    with RawServer(answer(b"first"), HANG, answer(b"after")) as server:
        assert with_client(server.url, scenario) == b"after"
    assert server.accepted == 2


# -- 7. TLS -------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_with_a_context_that_trusts_the_server_works_and_keeps_the_connection(
    ca, tls_server, host
):
    def trusting() -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return context

    with RawServer(answer(b"secret"), answer(b"again"), tls=tls_server) as server:
        url = f"https://{host}:{server.port}"

        async def scenario(client: openai.AsyncOpenAI) -> tuple[bytes, bytes]:
            return await get(client), await get(client)

        http = lean_http_client(LeanTransport(tls_context=trusting))
        assert with_client(url, scenario, http) == (b"secret", b"again")
    assert server.accepted == 1


def test_a_plain_http_server_needs_no_tls_context():
    def no_tls() -> ssl.SSLContext:
        raise AssertionError("a TLS context was built for a plain-http server")

    http = lean_http_client(LeanTransport(tls_context=no_tls))
    with RawServer(answer(b"plain")) as server:
        assert with_client(server.url, get, http) == b"plain"


def test_tls_with_the_default_context_rejects_an_unknown_ca(tls_server):
    with RawServer(answer(b"secret"), tls=tls_server) as server:
        with pytest.raises(openai.APIConnectionError) as failure:
            with_client(server.url, get)
        server.wait_for(lambda s: s.handshake_failures == 1)
    assert type(failure.value) is openai.APIConnectionError
    assert isinstance(failure.value.__cause__, httpx2.ConnectError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value.__cause__)
    assert server.requests == []


# -- 8. proxies ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "url", "proxied"),
    [
        ({}, "https://api.example.com/v1", False),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.example.com/v1", True),
        ({"https_proxy": "http://proxy:3128"}, "https://api.example.com/v1", True),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://api.example.com/v1", False),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://127.0.0.1:8000/v1", True),
        ({"ALL_PROXY": "http://proxy:3128"}, "https://api.example.com/v1", True),
        (
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.example.com"},
            "https://api.example.com/v1",
            False,
        ),
        (
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "api.example.com"},
            "https://api.example.com:8443/v1",
            False,
        ),
        (
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "other.org"},
            "https://api.example.com/v1",
            True,
        ),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, "https://api.example.com", False),
    ],
)
def test_proxy_in_env_follows_the_proxy_variables(monkeypatch, env, url, proxied):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_in_env(url) is proxied


def test_llm_client_sends_through_the_proxy_the_environment_names(monkeypatch):
    payload = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "p"}]}]}
    with FakeOpenAI() as fake, RawServer(answer(json.dumps(payload).encode())) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        assert complete(fake.base_url) == ["p"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert complete(fake.base_url) == ["ok"]  # straight to the server
        target = fake.base_url.encode()
    assert proxy.requests[0].startswith(b"POST %s/responses HTTP/1.1\r\n" % target)
    assert len(proxy.requests) == 1
    assert len(fake.requests) == 1


# -- 9. event loops -----------------------------------------------------------------------------
def test_one_transport_serves_successive_event_loops_without_reusing_their_connections():
    with RawServer(answer(b"first loop"), answer(b"second loop")) as server:
        client = sdk(server.url)
        assert asyncio.run(get(client)) == b"first loop"
        assert asyncio.run(get(client)) == b"second loop"
        server.wait_for(lambda s: s.client_closes == 1)  # the first loop's idle connection
        asyncio.run(client.close())  # and closing from a third loop closes the second's
        server.wait_for(lambda s: s.client_closes == 2)
    assert server.accepted == 2
