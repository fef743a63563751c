"""The LLM client: one model turn through the OpenAI SDK, Responses API or Chat Completions.

Callers speak a neutral conversation (`user`, `assistant` with tool calls, `tool` results) and
get back a `Turn`; `llm.wire` converts it into either API's input and reads the answers.

- One `openai.AsyncOpenAI` per client, used through its public methods only:
  `responses.with_raw_response.create(...)` and `chat.completions.with_raw_response.create(...)`
  with the request as keyword arguments, then `.parse()`. The raw response keeps the HTTP
  headers, which the `Turn` carries (`x-ratelimit-*`, `x-request-id`).
- HTTP, TLS and proxies are the SDK's: its default HTTP client honours `HTTPS_PROXY`/
  `HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` and `SSL_CERT_FILE`/`SSL_CERT_DIR`. The client made here
  is one with an answer-size limit (`llm.answer_size`: `max_answer_bytes`, 32 MiB by default,
  decompressed size included). A caller may pass its own `http_client` (an
  `openai.DefaultAsyncHttpxClient`); it stays the caller's, unlimited, and `aclose()` leaves
  it open. Like any async HTTP client, it belongs to the event loop it is
  used in: its kept-alive connections cannot serve a later `asyncio.run`.
- A request with a `timeout` has that long in all (a server dripping its answer a byte at a
  time cannot stretch it); the step's own timeout, slightly shorter, normally speaks first.
- Stateless: every request carries the whole conversation, `store=False`, and never a
  `previous_response_id`. Reasoning items and hosted-tool call items of earlier turns are not
  resent (without storage the provider cannot resolve them); their effect is in the text.
- `api: auto` tries `/responses` and, on 404/405, Chat Completions; once the chat endpoint
  answers (anything but another 404, which means the model is unknown), that base URL is
  remembered as chat-only for the life of the client.
- Errors are classified by exception type and status code, never by message text: rate
  limits, 408/409/5xx, timeouts, connection errors and malformed answers are retryable
  (`RetryableStepError`, with `retry_after` from `retry-after-ms`/`Retry-After`); bad
  credentials, bad requests, unknown models and a server certificate that does not verify
  (`ssl.SSLCertVerificationError` under the SDK's connection error) fail at once with what
  to fix.
- An answer that is not JSON, not the API's object, or lacks what the API always sends is a
  retryable "malformed response", never an empty output.
- The SDK never retries (`max_retries=0`): the scheduler owns retries and backoff, except for
  429s: every request first waits for its model's limiter (`llm.limiter`), and a 429 pauses
  that limiter and is sent again, without spending an attempt, until the step's deadline
  (without one, `RESENDS_WITHOUT_DEADLINE` times; then `RateLimited`, retryable).
- Chat Completions gets `max_tokens` (what compatible servers such as Ollama, vLLM and
  llama.cpp accept) and cannot carry hosted tools.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar, cast

import openai
from openai import Omit, not_given, omit
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from stepchain.errors import CredentialsMissing, RateLimited, RetryableStepError, StepError
from stepchain.llm.answer_size import bounded_http_client
from stepchain.llm.limiter import Limiters, Limits, budget, estimate_tokens
from stepchain.llm.providers import DEFAULT_BASE_URL, default_base_url
from stepchain.llm.wire import (
    MalformedAnswer,
    ModelCall,
    ToolCall,
    Turn,
    chat_messages,
    chat_tool,
    chat_turn,
    responses_input,
    responses_turn,
)
from stepchain.settings import DEFAULT_MAX_ANSWER_BYTES

__all__ = [
    "LLMClient",
    "ModelCall",
    "ToolCall",
    "Turn",
    "base_url_from_env",
    "check_credentials",
]

API_MODES = ("auto", "responses", "chat")
RESENDS_WITHOUT_DEADLINE = 10
_T = TypeVar("_T")


def check_credentials() -> None:
    """Fail with one clear line when no API key is configured."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise CredentialsMissing(
            "LLM steps need credentials: set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible "
            "server such as Ollama or vLLM; a local server without auth accepts any value, "
            "e.g. OPENAI_API_KEY=local)"
        )


def base_url_from_env() -> str:
    """OPENAI_BASE_URL, or OpenAI's own API; without a trailing slash."""
    return default_base_url()


class LLMClient:
    """An async OpenAI-compatible client with StepChain's error and usage semantics."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        http_client: openai.DefaultAsyncHttpxClient | None = None,
        limits: Mapping[str, Limits] | None = None,
        limiters: Limiters | None = None,
        headers: Mapping[str, str] | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        # one limiter per (base URL, model): this client's own, or those the caller shares
        self.limiters = limiters if limiters is not None else Limiters(limits)
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._owns_http_client = http_client is None  # a caller's client is theirs to close
        if http_client is None:
            http_client = bounded_http_client(max_answer_bytes, self.base_url)
        self._sdk = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=0,
            http_client=http_client,
            default_headers=dict(headers) if headers else None,
        )
        self._api_by_url: dict[str, str] = {}  # base URL -> "chat" once /responses was missing

    @classmethod
    def from_env(
        cls,
        http_client: openai.DefaultAsyncHttpxClient | None = None,
        limits: Mapping[str, Limits] | None = None,
        limiters: Limiters | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> LLMClient:
        """From OPENAI_API_KEY and OPENAI_BASE_URL, with declared rate limits per model.

        Raises:
            CredentialsMissing: OPENAI_API_KEY is not set.
        """
        check_credentials()
        key = os.environ["OPENAI_API_KEY"]
        return cls(
            key,
            base_url_from_env(),
            http_client,
            limits,
            limiters,
            max_answer_bytes=max_answer_bytes,
        )

    async def aclose(self) -> None:
        """Close the HTTP client StepChain made; a caller's own stays open."""
        if self._owns_http_client:
            await self._sdk.close()

    async def complete(self, call: ModelCall) -> Turn:
        """Send one turn with the API the call asks for (auto: Responses, else chat), when
        its model's limiter lets it go; a 429 waits for the limiter and sends it again.

        Raises:
            RetryableStepError: a transient failure worth another attempt.
            RateLimitTimeout: waiting for the rate limit would pass the step's deadline.
            StepError: a failure that another attempt would repeat.
        """
        limiter = self.limiters.get(self.base_url, call.model)
        cost = estimate_tokens(
            call.system, call.messages, [call.tools, call.output_format], call.max_output_tokens
        )
        loop = asyncio.get_running_loop()
        resends = 0
        while True:
            await limiter.acquire(cost)
            try:
                turn = await self._within(call.timeout, self._complete(call))
            except RateLimited as exc:
                limiter.throttled(exc.retry_after, exc.headers, loop.time())
                current = budget.get()
                resends += 1
                if (current is None or current.deadline is None) and (
                    resends > RESENDS_WITHOUT_DEADLINE
                ):
                    raise
                continue
            except BaseException:
                limiter.failed()
                raise
            limiter.answered(cost, _counted(turn.usage, call), turn.headers, loop.time())
            return turn

    async def _within(self, timeout: float | None, request: Awaitable[Turn]) -> Turn:
        """The request, given `timeout` seconds in all (not per read)."""
        try:
            async with asyncio.timeout(timeout):
                return await request
        except TimeoutError:
            raise RetryableStepError(
                f"the LLM request to {self.base_url} timed out", kind="timeout"
            ) from None

    async def _complete(self, call: ModelCall) -> Turn:
        api = call.api if call.api != "auto" else self._api_by_url.get(self.base_url, "auto")
        if api == "chat":
            return await self._send(self._chat, call)
        if api == "responses":
            return await self._send(self._responses, call)
        try:
            return await self._responses(call)
        except openai.APIStatusError as exc:
            if exc.status_code not in (404, 405):
                raise _classify(exc, self.base_url) from None
        except Exception as exc:
            raise _classify(exc, self.base_url) from None
        try:
            turn = await self._chat(call)
        except openai.NotFoundError as exc:  # neither endpoint knows it: most likely the model
            raise _classify(exc, self.base_url) from None
        except Exception as exc:
            self._api_by_url[self.base_url] = "chat"
            raise _classify(exc, self.base_url) from None
        self._api_by_url[self.base_url] = "chat"
        return turn

    async def _send(self, method: Callable[[ModelCall], Awaitable[Turn]], call: ModelCall) -> Turn:
        try:
            return await method(call)
        except Exception as exc:
            raise _classify(exc, self.base_url) from None

    # -- Responses API ----------------------------------------------------------------------
    async def _responses(self, call: ModelCall) -> Turn:
        # wire.py builds the request's parts as plain JSON-shaped dicts, not the SDK's
        # TypedDicts: hence the casts to Any.
        raw = await self._sdk.responses.with_raw_response.create(
            model=call.model,
            input=cast(Any, responses_input(call.messages)),
            instructions=call.system or omit,
            max_output_tokens=_given(call.max_output_tokens),
            store=False,
            temperature=_given(call.temperature),
            text=cast(Any, {"format": call.output_format}) if call.output_format else omit,
            tools=cast(Any, call.tools) if call.tools else omit,
            timeout=not_given if call.timeout is None else call.timeout,
        )
        turn = responses_turn(_answer(raw.parse, Response))
        turn.headers = dict(raw.headers.items())
        return turn

    # -- Chat Completions -------------------------------------------------------------------
    async def _chat(self, call: ModelCall) -> Turn:
        hosted = [str(t.get("type")) for t in call.tools if t.get("type") != "function"]
        if hosted:
            raise StepError(
                f"hosted tools ({', '.join(hosted)}) need the Responses API, and this step "
                f"uses Chat Completions at {self.base_url}",
                "use api: responses with a provider that hosts them, or remove them from tools:",
            )
        fmt = call.output_format
        if fmt and fmt["type"] == "json_schema":
            inner = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
            response_format: Any = {"type": "json_schema", "json_schema": inner}
        else:
            response_format = fmt or omit
        raw = await self._sdk.chat.completions.with_raw_response.create(
            model=call.model,
            messages=cast(Any, chat_messages(call.system, call.messages)),
            max_tokens=_given(call.max_output_tokens),
            response_format=response_format,
            temperature=_given(call.temperature),
            tools=cast(Any, [chat_tool(t) for t in call.tools]) if call.tools else omit,
            timeout=not_given if call.timeout is None else call.timeout,
        )
        turn = chat_turn(_answer(raw.parse, ChatCompletion))
        turn.headers = dict(raw.headers.items())
        return turn


def _counted(usage: Mapping[str, int], call: ModelCall) -> int | None:
    """The tokens a provider counts against its limit: the input the answer reports, plus the
    output allowance (providers reserve max_output_tokens), or the output if larger."""
    if not usage:
        return None
    output = max(usage.get("output_tokens", 0), call.max_output_tokens or 0)
    return usage.get("input_tokens", 0) + output


def _given(value: _T | None) -> _T | Omit:
    """The value, or `omit` (the field is left out of the request) when it is None."""
    return omit if value is None else value


def _answer(parse: Callable[[], object], model: type[openai.BaseModel]) -> dict[str, Any]:
    """The parsed answer as the JSON object the server sent; MalformedAnswer if it is not one.

    The SDK builds its models without validating them, and hands back whatever else the body
    held (text, a list, None) as is: only an instance of the expected model is an answer.
    """
    try:
        parsed = parse()
    except ValueError as exc:  # the body is not JSON (JSONDecodeError, UnicodeDecodeError)
        raise MalformedAnswer("not JSON") from exc
    if not isinstance(parsed, model):
        raise MalformedAnswer(f"not a {model.__name__} object")
    return parsed.to_dict(warnings=False)


# -- errors ---------------------------------------------------------------------------------
def _classify(exc: Exception, base_url: str) -> Exception:
    """The StepChain error for an SDK failure (by type and status); other errors unchanged."""
    if isinstance(exc, openai.RateLimitError):
        return RateLimited(
            f"rate limited by the LLM server (429): {_server_message(exc)}",
            retry_after=_retry_after(exc.response.headers),
            headers=dict(exc.response.headers.items()),
        )
    if isinstance(exc, openai.APITimeoutError):
        return RetryableStepError(f"the LLM request to {base_url} timed out", kind="timeout")
    if isinstance(exc, openai.APIConnectionError):
        cert = _cause(exc, ssl.SSLCertVerificationError)
        if cert is not None:
            return StepError(  # another attempt would meet the same certificate
                f"cannot verify the TLS certificate of the LLM server at {base_url}: {cert}",
                "for a server with a private CA (or behind a TLS-intercepting proxy), point "
                "SSL_CERT_FILE (or SSL_CERT_DIR) at that CA's certificate",
                kind="connection",
            )
        reason = exc.__cause__ or exc
        return RetryableStepError(
            f"cannot reach the LLM server at {base_url}: {reason}", kind="connection"
        )
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return StepError(
            f"the LLM server refused the credentials ({exc.status_code}): {_server_message(exc)}",
            "check OPENAI_API_KEY (and OPENAI_BASE_URL if you use a compatible server)",
            kind="auth",
        )
    if isinstance(exc, openai.APIStatusError):
        status, message = exc.status_code, _server_message(exc)
        if status in (408, 409) or status >= 500:
            kind = "server" if status >= 500 else "transient"
            return RetryableStepError(f"the LLM server failed ({status}): {message}", kind=kind)
        if status == 404:
            return StepError(
                f"not found on the LLM server ({base_url}): {message}",
                "check the model name; for a server without the Responses API use api: chat",
                kind="not_found",
            )
        return StepError(
            f"the LLM server rejected the request ({status}): {message}",
            "check the step's model, temperature, max_output_tokens, output_schema and tools",
            kind="bad_request",
        )
    if isinstance(exc, (MalformedAnswer, openai.APIResponseValidationError)):
        return RetryableStepError(
            f"the LLM server at {base_url} sent a malformed response", kind="malformed"
        )
    return exc


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in the chain of causes under `exc`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()
    return exc.message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
