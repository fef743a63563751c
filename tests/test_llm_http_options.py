"""Proxies, a private CA and a caller's own HTTP client, each through a real pipeline run on
127.0.0.1: the SDK's HTTP stack does the work, StepChain only hands it the settings.

To prove a request went through the proxy, the server is named `api.stepchain.test`: a name
under the reserved `.test` domain never resolves, so only the proxy (which routes it to the
local server) can reach it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import stepchain
import trustme
from stepchain.decomposer import decompose
from stepchain.llm.client import LLMClient, ModelCall

from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.forward_proxy import ForwardProxy

HOST = "api.stepchain.test"
# urllib and httpx2 read these in upper or lower case; under CGI (REQUEST_METHOD) not HTTP_PROXY
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")
PIPELINE = """\
version: 1
name: http-options
defaults:
  retries: 0
steps:
  - id: ask
    prompt: Say hello.
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA settings from the machine; a key for the fake servers."""
    for name in (*PROXY_VARIABLES, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "http-options.yaml"
    path.write_text(PIPELINE)
    return path


def run(path: Path, **options) -> stepchain.RunResult:
    return stepchain.Executor().run(path, **options)


# -- proxies --------------------------------------------------------------------------------
def test_https_proxy_tunnels_a_run_to_a_tls_server_with_connect(monkeypatch, ca, ca_file, pipeline):
    with (
        FakeOpenAI(tls=server_tls(ca, HOST)) as fake,
        ForwardProxy(routes={HOST: ("127.0.0.1", fake.port)}) as proxy,
    ):
        fake.script(Reply.text("hello through the tunnel"))
        monkeypatch.setenv("OPENAI_BASE_URL", f"https://{HOST}/v1")
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        result = run(pipeline)
        assert result.status == "completed", result.steps["ask"].error
        assert result.steps["ask"].output == "hello through the tunnel"
        assert [(r.method, r.target) for r in proxy.requests] == [("CONNECT", f"{HOST}:443")]
        [request] = fake.requests
        assert request.path == "/v1/responses"
        assert request.headers["host"] == HOST
        assert request.headers["authorization"] == "Bearer test-key"


def test_http_proxy_forwards_a_runs_requests(monkeypatch, pipeline):
    with (
        FakeOpenAI() as fake,
        ForwardProxy(routes={HOST: ("127.0.0.1", fake.port)}) as proxy,
    ):
        fake.script(Reply.text("hello via the proxy"))
        monkeypatch.setenv("OPENAI_BASE_URL", f"http://{HOST}/v1")
        monkeypatch.setenv("http_proxy", proxy.url)  # the lower-case spelling counts too
        result = run(pipeline)
        assert result.status == "completed", result.steps["ask"].error
        assert result.steps["ask"].output == "hello via the proxy"
        [through] = proxy.requests
        assert (through.method, through.target) == ("POST", f"http://{HOST}/v1/responses")
        assert through.headers["authorization"] == "Bearer test-key"
        [request] = fake.requests
        assert request.json["input"] == [{"role": "user", "content": "Say hello."}]


def test_no_proxy_sends_a_run_straight_to_the_server(monkeypatch, pipeline):
    with FakeOpenAI() as fake, ForwardProxy() as proxy:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        result = run(pipeline)
        assert result.status == "completed", result.steps["ask"].error
        assert proxy.requests == []
        assert len(fake.requests) == 1


def test_a_proxy_that_is_down_is_a_retryable_cannot_reach_error(monkeypatch, tmp_path):
    with ForwardProxy() as proxy:
        dead = proxy.url  # closed when the block ends: nothing listens there any more
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://{HOST}/v1")
    monkeypatch.setenv("HTTP_PROXY", dead)
    path = tmp_path / "retry.yaml"
    path.write_text(PIPELINE.replace("retries: 0", "retries: 1\n  backoff: {initial: 0.01}"))
    step = run(path).steps["ask"]
    assert (step.status, step.attempts) == ("failed", 2)
    assert f"cannot reach the LLM server at http://{HOST}/v1" in step.error


# -- a private CA ---------------------------------------------------------------------------
def test_ssl_cert_file_lets_a_run_trust_a_private_ca(monkeypatch, ca, ca_file, pipeline):
    with FakeOpenAI(tls=server_tls(ca, "127.0.0.1", "localhost")) as fake:
        assert fake.base_url.startswith("https://127.0.0.1:")
        fake.script(Reply.text("hello over TLS"))
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        result = run(pipeline)
        assert result.status == "completed", result.steps["ask"].error
        assert result.steps["ask"].output == "hello over TLS"
        assert fake.handshake_failures == 0


def test_without_the_ca_a_run_fails_at_once_with_a_certificate_error(
    monkeypatch, ca, pipeline, tmp_path
):
    with FakeOpenAI(tls=server_tls(ca, "127.0.0.1", "localhost")) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        path = tmp_path / "retries.yaml"
        path.write_text(PIPELINE.replace("retries: 0", "retries: 3"))
        step = run(path).steps["ask"]
        assert (step.status, step.attempts) == ("failed", 1)  # a retry would meet the same CA
        assert step.error.startswith(
            f"cannot verify the TLS certificate of the LLM server at {fake.base_url}: "
        )
        assert "CERTIFICATE_VERIFY_FAILED" in step.error
        assert "SSL_CERT_FILE" in step.error  # the hint says what to set
        assert fake.requests == []
        assert fake.handshake_failures == 1


# -- the caller's own HTTP client -----------------------------------------------------------
@pytest.fixture
def fake_env(monkeypatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


@pytest.fixture
def keep_alive_env(monkeypatch) -> Iterator[FakeOpenAI]:
    """A server that keeps connections open, as api.openai.com does."""
    with FakeOpenAI(keep_alive=True) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


def wait_for_connections(fake: FakeOpenAI, count: int) -> None:
    deadline = time.monotonic() + 5
    while fake.open_connections != count:
        assert time.monotonic() < deadline, f"{fake.open_connections} connection(s) open"
        time.sleep(0.01)


def test_a_callers_http_client_carries_a_runs_requests_and_stays_open(fake_env, pipeline):
    seen: list[str] = []

    async def hook(request) -> None:
        seen.append(str(request.url))

    client = openai.DefaultAsyncHttpxClient(
        headers={"x-team": "data-eng"}, event_hooks={"request": [hook]}
    )
    results = stepchain.Executor().execute(pipeline, http_client=client)
    assert [(r.status, r.output) for r in results] == [("completed", "ok")]
    assert seen == [f"{fake_env.base_url}/responses"]
    [request] = fake_env.requests
    assert request.headers["x-team"] == "data-eng"
    assert request.headers["authorization"] == "Bearer test-key"  # the SDK's own headers too
    assert not client.is_closed  # the caller's: StepChain does not close it
    asyncio.run(client.aclose())


def test_a_callers_http_client_serves_runs_in_its_event_loop_and_keeps_its_connection(
    keep_alive_env, pipeline
):
    async def go() -> list[stepchain.RunResult]:
        async with openai.DefaultAsyncHttpxClient(headers={"x-team": "data-eng"}) as client:
            results = []
            for run_id in ("first", "second"):
                results.append(
                    await stepchain.Executor().arun(
                        pipeline, run_id=run_id, no_cache=True, http_client=client
                    )
                )
                assert not client.is_closed
                await asyncio.to_thread(wait_for_connections, keep_alive_env, 1)
        return results

    keep_alive_env.script(Reply.text("one"), Reply.text("two"))
    first, second = asyncio.run(go())
    assert (first.steps["ask"].output, second.steps["ask"].output) == ("one", "two")
    assert [r.headers["x-team"] for r in keep_alive_env.requests] == ["data-eng", "data-eng"]
    wait_for_connections(keep_alive_env, 0)  # closed by its owner


def test_the_client_a_run_makes_is_closed_at_the_end(keep_alive_env, pipeline):
    assert run(pipeline).status == "completed"
    wait_for_connections(keep_alive_env, 0)  # the server sees the kept-alive connection closed


def test_llm_client_aclose_leaves_a_callers_client_open(fake_env):
    async def go() -> str:
        async with openai.DefaultAsyncHttpxClient() as client:
            llm = LLMClient.from_env(http_client=client)
            try:
                call = ModelCall(model="m", messages=[{"role": "user", "content": "hi"}])
                turn = await llm.complete(call)
            finally:
                await llm.aclose()
            assert not client.is_closed
            return turn.text

    assert asyncio.run(go()) == "ok"


def test_decompose_sends_through_a_callers_http_client(fake_env):
    client = openai.DefaultAsyncHttpxClient(headers={"x-team": "planning"})
    answer = {
        "version": 1,
        "name": "greet",
        "steps": [{"id": "hello", "prompt": "Say hello."}],
    }
    fake_env.script(Reply.json(answer))
    pipe = decompose("Say hello", http_client=client)
    assert [s.id for s in pipe.steps] == ["hello"]
    assert fake_env.requests[0].headers["x-team"] == "planning"
    assert not client.is_closed
    asyncio.run(client.aclose())
