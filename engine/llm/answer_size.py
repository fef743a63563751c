"""The answer-size limit: no LLM server's answer, however it is sent, grows memory past it.

`bounded_http_client(limit, where)` is the HTTP client `LLMClient` makes for itself (an
`openai.DefaultAsyncHttpxClient`, so proxies and TLS settings stay the SDK's). It asks only
for `gzip, deflate` and, through a public `response` event hook that runs before the body is
read, checks every answer (errors included) before the SDK reads it:

- a `Content-Length` over the limit fails at once, before a byte of the body is read;
- the body is counted as it arrives, raw and decompressed (the decompressed size is counted
  in bounded pieces, a gzip bomb never inflates in memory); past the limit the read stops;
- a content coding StepChain did not ask for (`br`, or `gzip` twice) is a malformed answer.

A caller's own `http_client` is the caller's: it gets none of this.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from functools import partial

import httpx2
import openai
from stepchain.errors import StepError
from stepchain.llm.wire import MalformedAnswer
from stepchain.settings import MAX_ANSWER_ENV, format_size

__all__ = ["AnswerTooLarge", "bounded_http_client"]

ACCEPTED_ENCODINGS = ("gzip", "deflate")
PIECE = 2**20  # the most a compressed chunk inflates to at a time while it is counted


class AnswerTooLarge(StepError):
    """An LLM server's answer is larger than the answer-size limit."""

    kind = "too_large"

    def __init__(self, where: str, limit: int, size: int | None = None) -> None:
        sent = f"an answer of {format_size(size)}," if size else "an answer"
        super().__init__(
            f"the LLM server at {where} sent {sent} larger than {format_size(limit)}, the limit "
            f"{MAX_ANSWER_ENV} sets",
            f"if its answers are meant to be this large, raise {MAX_ANSWER_ENV} (e.g. 256MiB); "
            "otherwise check the server",
        )


def bounded_http_client(limit: int, where: str) -> openai.DefaultAsyncHttpxClient:
    """An SDK HTTP client whose answers may not pass `limit` bytes (`where` names the server
    in errors)."""
    return openai.DefaultAsyncHttpxClient(
        headers={"Accept-Encoding": ", ".join(ACCEPTED_ENCODINGS)},
        event_hooks={"response": [partial(_bound, limit, where)]},
    )


async def _bound(limit: int, where: str, response: httpx2.Response) -> None:
    """Check an answer's head, and count its body as it is read."""
    codings = [
        coding.strip().lower()
        for coding in response.headers.get_list("content-encoding", split_commas=True)
    ]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if len(codings) > 1 or (codings and codings[0] not in ACCEPTED_ENCODINGS):
        raise MalformedAnswer(f"content coding {', '.join(codings)} was not asked for")
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise AnswerTooLarge(where, limit, int(length))
    if isinstance(response.stream, httpx2.AsyncByteStream):
        response.stream = _Counted(response.stream, limit, where, codings[0] if codings else "")


class _Counted(httpx2.AsyncByteStream):
    """A response body that stops with AnswerTooLarge once it (or what it inflates to) passes
    the limit. The bytes pass through as they came: httpx decodes them as usual."""

    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, where: str, coding: str) -> None:
        self.inner = inner
        self.limit = limit
        self.where = where
        self.inflater = _Inflater(coding) if coding else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self.inner:
            size += len(chunk)
            if self.inflater is not None:
                self.inflater.feed(chunk, self.limit)
            if max(size, self.inflater.size if self.inflater else 0) > self.limit:
                raise AnswerTooLarge(self.where, self.limit)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Inflater:
    """Counts the bytes a gzip or deflate stream inflates to, a piece at a time, keeping none.
    Data zlib cannot read stops the count: httpx's own decoder then fails on the same bytes."""

    def __init__(self, coding: str) -> None:
        self.size = 0
        self.raw_deflate_tried = coding != "deflate"  # deflate: zlib-wrapped, else raw
        wbits = zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS
        self.inflate: zlib._Decompress | None = zlib.decompressobj(wbits)
        self.started = False

    def feed(self, data: bytes, limit: int) -> None:
        if self.inflate is None:
            return
        first, self.started = not self.started, True
        size, rest = self.size, data
        try:
            while rest and size <= limit:
                size += len(self.inflate.decompress(rest, PIECE))
                rest = self.inflate.unconsumed_tail
        except zlib.error:
            if first and not self.raw_deflate_tried:  # as httpx does: a raw deflate stream
                self.raw_deflate_tried = True
                self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                self.started = False
                self.feed(data, limit)
                return
            self.inflate = None
        self.size = size
