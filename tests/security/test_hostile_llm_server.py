"""Hostile LLM servers, at the wire: every answer is bounded in size and time, and a bad answer
is never cached.

A raw-socket server (`tests.support.raw_http`, threads on 127.0.0.1, an ephemeral port) sends
exact bytes: huge and endless bodies, gzip and deflate bombs, answers of the wrong shape, stalls,
drips and resets. Each pipeline runs through the real CLI in a subprocess whose peak memory is
read with `os.wait4`. Every case checks the exit code, the one-line error (in `--json` and on
stderr), that no traceback was printed, and that a second run asks the server again (nothing bad
was cached) and completes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from stepchain import Executor, Settings
from stepchain.errors import RetryableStepError
from stepchain.llm.client import LLMClient, ModelCall

from tests.support.raw_http import RawServer, stream

MiB = 2**20
MEMORY_CEILING = 256 * MiB  # the CLI with a 32 MiB answer peaks near 100 MiB; unbounded, far over


# -- answers --------------------------------------------------------------------------------
def head(status: int = 200, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(body: bytes | str, status: int = 200, **headers: str) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return head(status, Content_Length=str(len(data)), **headers) + data


def responses_body(text: str) -> str:
    return json.dumps(
        {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        }
    )


GOOD = answer(responses_body("fine"))


def chunked(chunks: Iterator[bytes], status: int = 200, **headers: str) -> Iterator[bytes]:
    """A chunked answer: the head, then each chunk framed (never ending if `chunks` doesn't)."""
    yield head(status, Transfer_Encoding="chunked", **headers)
    for data in chunks:
        yield b"%x\r\n%s\r\n" % (len(data), data)
    yield b"0\r\n\r\n"


def bomb_blocks(coding: str) -> Iterator[bytes]:
    """An endless compressed stream of zeros: about 1 KiB on the wire inflates to 1 MiB."""
    wbits = {"gzip": zlib.MAX_WBITS | 16, "deflate": -zlib.MAX_WBITS}[coding]
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(MiB)
    yield compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    # after a full flush the compressor starts afresh: the same MiB compresses the same
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    yield from itertools.repeat(block)


def gzip_bomb(inflated_mib: int) -> bytes:
    """A whole gzip body (its trailer aside) of `inflated_mib` MiB of zeros."""
    blocks = bomb_blocks("gzip")
    data = b"".join(itertools.islice(blocks, inflated_mib))
    return data + zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()


# -- the run ---------------------------------------------------------------------------------
PIPELINE = """
version: 1
name: hostile
steps:
  - {{id: ask, prompt: hi, model: m, timeout: {timeout}, retries: {retries}, api: {api}, backoff: {{initial: 0.01}}}}
"""


@dataclass
class Ran:
    exit_code: int
    stdout: str
    stderr: str
    peak_memory: int  # bytes

    @property
    def doc(self) -> dict:
        return json.loads(self.stdout)

    @property
    def step(self) -> dict:
        return self.doc["steps"]["ask"]


@pytest.fixture
def server() -> Iterator[RawServer]:
    with RawServer() as raw:
        yield raw


@pytest.fixture
def run(tmp_path: Path, write, server: RawServer):
    def _run(*, timeout: float = 60, retries: int = 0, api: str = "auto", **env: str) -> Ran:
        path = write("p.yaml", PIPELINE.format(timeout=timeout, retries=retries, api=api))
        environ = {
            **os.environ,
            "OPENAI_BASE_URL": server.url + "/v1",
            "OPENAI_API_KEY": "test-key",
            **env,
        }
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stepchain.cli", "run", str(path), "--json"],
                stdout=stdout,
                stderr=stderr,
                env=environ,
            )
        guard = threading.Timer(120, proc.kill)  # a hang fails the test instead of stalling it
        guard.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            guard.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        ran = Ran(proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss * 1024)
        assert "Traceback" not in ran.stderr + ran.stdout
        return ran

    return _run


def assert_failed_with(ran: Ran, message: str) -> None:
    """Exit 1; the step's error starts with `message`, in --json and on stderr, as one line
    (plus the hint); no output."""
    assert ran.exit_code == 1, ran.stderr
    error = ran.step["error"]
    assert error.startswith(message), error
    assert len(error.split("\n  hint: ")[0].splitlines()) == 1
    assert f"step ask failed: {message}" in ran.stderr
    assert ran.step["output"] is None and ran.doc["outputs"] == {}
    assert ran.peak_memory < MEMORY_CEILING, f"peak memory {ran.peak_memory / MiB:.0f} MiB"


def assert_nothing_cached(run, server: RawServer, **options) -> None:
    """A second run asks the server again (the bad answer was not cached) and completes."""
    before = len(server.requests)
    server.script(GOOD)
    again = run(**options)
    assert again.exit_code == 0, again.stderr
    assert again.step["output"] == "fine"
    assert again.step["cached"] is False
    assert len(server.requests) == before + 1


def too_large(server: RawServer, limit: str = "32 MiB", size: str | None = None) -> str:
    sent = f"an answer of {size}," if size else "an answer"
    return (
        f"the LLM server at {server.url}/v1 sent {sent} larger than {limit}, the limit "
        "STEPCHAIN_MAX_ANSWER_BYTES sets"
    )


# -- size -------------------------------------------------------------------------------------
def test_a_declared_huge_length_fails_before_the_body_is_read(run, server):
    body = itertools.repeat(b" " * 65536)  # it would never end
    server.script(stream(itertools.chain([head(Content_Length=str(10 * 2**30))], body)))
    ran = run()
    assert_failed_with(ran, too_large(server, size="10 GiB"))
    assert (
        "hint: if its answers are meant to be this large, raise STEPCHAIN_MAX_ANSWER_BYTES"
        in (ran.step["error"])
    )
    assert ran.step["error_kind"] == "too_large"
    assert ran.step["attempts"] == 1  # another attempt would be as large
    assert_nothing_cached(run, server)


def test_a_huge_body_that_ends_with_the_connection_is_cut_at_the_limit(run, server):
    body = itertools.repeat(b" " * 65536, 48 * 16)  # 48 MiB, no length: it ends at the close
    server.script(stream(itertools.chain([head(Connection="close")], body)))
    assert_failed_with(run(), too_large(server))
    assert_nothing_cached(run, server)


def test_an_endless_chunked_body_is_cut_at_the_limit(run, server):
    server.script(stream(chunked(itertools.repeat(b"[" * 65536))))
    assert_failed_with(run(), too_large(server))
    assert_nothing_cached(run, server)


def test_an_endless_error_body_is_cut_at_the_limit_too(run, server):
    server.script(stream(chunked(itertools.repeat(b"x" * 65536), status=500)))
    assert_failed_with(run(retries=2), too_large(server))
    assert_nothing_cached(run, server)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_an_endless_compression_bomb_is_cut_at_the_limit(run, server, coding):
    server.script(stream(chunked(bomb_blocks(coding), Content_Encoding=coding)))
    assert_failed_with(run(), too_large(server))
    assert_nothing_cached(run, server)


def test_a_gzip_bomb_with_a_small_length_is_cut_at_the_limit(run, server):
    bomb = gzip_bomb(1024)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 2 * MiB
    server.script(answer(bomb, Content_Encoding="gzip"))
    assert_failed_with(run(), too_large(server))
    assert_nothing_cached(run, server)


def test_codings_not_asked_for_are_a_malformed_answer(run, server):
    doubled = zlib.compress(zlib.compress(bytes(64 * MiB), 9), 9)  # a bomb inside a bomb
    server.script(answer(doubled, Content_Encoding="deflate, deflate"))
    server.script(answer(b"\x00" * 100, Content_Encoding="br"))
    ran = run(retries=1)
    assert_failed_with(
        ran, f"the LLM server at {server.url}/v1 sent a malformed response (after 2 attempts)"
    )
    assert_nothing_cached(run, server)
    assert all(b"accept-encoding: gzip, deflate\r\n" in r.lower() for r in server.requests)


def test_the_limit_is_a_setting(run, server):
    limit = {"STEPCHAIN_MAX_ANSWER_BYTES": "1MiB"}
    server.script(answer(responses_body("y" * (2 * MiB))))
    assert_failed_with(run(**limit), too_large(server, "1 MiB", size="2 MiB"))
    server.script(answer(responses_body("n" * (MiB - 1000))))  # under the limit: fine
    ran = run(**limit)
    assert ran.exit_code == 0, ran.stderr
    assert ran.step["output"] == "n" * (MiB - 1000)


def test_a_limit_that_is_not_a_size_fails_before_any_request(run, server):
    ran = run(STEPCHAIN_MAX_ANSWER_BYTES="lots")
    assert ran.exit_code == 2
    assert ran.stderr.startswith(
        "error: STEPCHAIN_MAX_ANSWER_BYTES='lots' is not a size of at least 1 KiB\n"
        "  hint: set it to a number of bytes, or with a unit: 64MiB, 512KiB, 1GiB, 100MB "
        "(default: 32 MiB)\n"
    )
    assert server.requests == []


# -- shape ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("api", "body"),
    [
        ("auto", "{}"),
        ("responses", '{"id": "resp_1", "object": "response", "status": "completed"}'),
        ("responses", '{"object": "response", "output": null}'),
        ("responses", '{"output": [{"type": "message", "content": [{"type": "output_text"}]}]}'),
        ("responses", '{"object": "response", "status": "completed", "output": []}'),
        ("chat", "{}"),
        ("chat", '{"object": "chat.completion", "choices": []}'),
        ("chat", '{"choices": [{"index": 0, "finish_reason": "stop"}]}'),
        ("chat", '{"choices": [{"message": {"role": "assistant", "content": null}}]}'),
    ],
)
def test_a_200_answer_of_the_wrong_shape_is_malformed_retried_and_never_cached(
    run, server, api, body
):
    server.script(answer(body), answer(body))
    ran = run(retries=1, api=api)
    assert_failed_with(
        ran, f"the LLM server at {server.url}/v1 sent a malformed response (after 2 attempts)"
    )
    assert ran.step["attempts"] == 2 and ran.step["error_kind"] == "malformed"
    assert '""' not in ran.stdout
    if api == "chat":  # the chat API takes the good answer in its own shape
        chat = {
            "id": "c",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "fine"},
                }
            ],
        }
        server.script(answer(json.dumps(chat)))
        again = run(retries=1, api=api)
        assert again.exit_code == 0 and again.step["output"] == "fine"
        assert again.step["cached"] is False
        return
    assert_nothing_cached(run, server, retries=1, api=api)


# -- time -------------------------------------------------------------------------------------
def test_a_server_that_stalls_mid_body_is_bounded_by_the_steps_timeout(run, server):
    server.script(head(Content_Length="1000") + b'{"id": "resp_1", "output": [')  # then silence
    assert_failed_with(run(timeout=2), "timed out after 2s")
    assert_nothing_cached(run, server, timeout=2)


def test_a_server_that_drips_a_byte_a_second_is_bounded_by_the_steps_timeout(run, server):
    # every read gets a byte well within any per-read timeout: only a deadline for the whole
    # request ends it
    drip = itertools.chain([head(Content_Length="100000")], itertools.repeat(b" "))
    server.script(stream(drip, pause=1.0))
    assert_failed_with(run(timeout=3), "timed out after 3s")
    assert_nothing_cached(run, server, timeout=3)


def test_a_connection_reset_mid_answer_is_retried_then_fails_cleanly(run, server):
    partial = [head(Content_Length="1000"), b'{"id": "resp_1", "out']
    server.script(stream(partial, reset=True), stream(partial, reset=True))
    ran = run(retries=1)
    assert_failed_with(ran, f"cannot reach the LLM server at {server.url}/v1: ")
    assert ran.step["attempts"] == 2 and ran.step["error_kind"] == "connection"
    assert_nothing_cached(run, server, retries=1)


def test_a_request_has_its_timeout_in_all_not_per_read(server):
    # a byte every 0.5 s never trips a 2 s read timeout; the request's deadline ends it (were
    # it missing, the answer would end after 15 s as malformed JSON, and the test would fail)
    drip = itertools.chain([head(Content_Length="30")], itertools.repeat(b" ", 30))
    server.script(stream(drip, pause=0.5))
    call = ModelCall(model="m", messages=[{"role": "user", "content": "hi"}], timeout=2)

    async def ask() -> None:
        client = LLMClient("test-key", server.url + "/v1")
        try:
            await client.complete(call)
        finally:
            await client.aclose()

    with pytest.raises(RetryableStepError, match=r"^the LLM request to .* timed out$"):
        asyncio.run(ask())


def test_the_limit_is_a_setting_in_python_too(server, write, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    path = write("p.yaml", PIPELINE.format(timeout=30, retries=0, api="auto"))
    server.script(GOOD)
    settings = Settings(home=tmp_path / "home", max_answer_bytes=100)
    [result] = Executor(settings=settings).execute(path)
    assert result.status == "failed" and result.output is None
    size = f"{len(responses_body('fine'))} bytes"  # as its Content-Length says
    assert result.error.startswith(too_large(server, "100 bytes", size=size))
    server.script(GOOD)
    [result] = Executor().execute(path)  # the default limit; nothing was cached
    assert result.status == "completed" and result.output == "fine"
