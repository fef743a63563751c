"""The LLM client: one model turn over the OpenAI SDK, Responses API or Chat Completions.

Callers speak a neutral conversation (`user`, `assistant` with tool calls, `tool` results) and
get back a `Turn`; this module turns it into either wire format and back.

- Stateless: every request carries the whole conversation, `store=False`, and never a
  `previous_response_id`. Reasoning items and hosted-tool call items of earlier turns are not
  resent (without storage the provider cannot resolve them); their effect is in the text.
- `api: auto` tries `/responses` and, on 404/405, Chat Completions; once the chat endpoint
  answers (anything but another 404, which means the model is unknown), that base URL is
  remembered as chat-only for the life of the client.
- Errors are classified by exception type and status code, never by message text: rate
  limits, 408/409/5xx, timeouts, connection errors and malformed bodies are retryable
  (`RetryableStepError`, with `retry_after` from `retry-after-ms`/`Retry-After`); bad
  credentials, bad requests and unknown models fail at once with what to fix.
- The SDK never retries (`max_retries=0`): the scheduler owns retries and backoff.
- Requests go through the SDK's `client.post` (its auth, headers, timeouts and error types)
  with the body already in wire form, in the field order of the SDK's own `create()` (the
  same bytes); the answer is read as plain JSON. That skips the SDK's per-request params
  transform and its response models (~2 ms of CPU per request, serial on the event loop).
  tests/test_llm_client_wire.py checks both against the SDK's `create()` and models.
- HTTP goes through `http_transport.LeanTransport` (the SDK's default stack costs ~1.5 ms of
  CPU per request, serial on the event loop), or through the SDK's default transport when the
  environment names a proxy for the server.
- The TLS context (https only) and the SDK's platform probe are built once per process, early,
  by `llm_shared`.
- Structured output formats come from `llm_schema`; the wire shapes of the conversation and
  the answers from `llm_wire`.
- Chat Completions gets `max_tokens` (what compatible servers such as Ollama, vLLM and
  llama.cpp accept) and cannot carry hosted tools.
"""

from __future__ import annotations

import json
import os
import time
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from stepchain.errors import CredentialsMissing, RetryableStepError, StepError
from stepchain.llm.http_transport import LeanTransport, proxy_in_env
from stepchain.llm.shared import adopt_platform, shared_ssl_context
from stepchain.llm.wire import (
    ModelCall,
    ToolCall,
    Turn,
    chat_messages,
    chat_tool,
    chat_turn,
    responses_input,
    responses_turn,
)

__all__ = [
    "LLMClient",
    "ModelCall",
    "ToolCall",
    "Turn",
    "base_url_from_env",
    "check_credentials",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_MODES = ("auto", "responses", "chat")
_BEARER = {"bearer_auth": True}  # the auth the SDK's own responses/chat `create` ask for


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
    return (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


class LLMClient:
    """An async OpenAI-compatible client with StepChain's error and usage semantics."""

    def __init__(self, api_key: str, base_url: str | None = None) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        if proxy_in_env(self.base_url):  # httpx2 reads proxy variables only for its own transport
            http_client = openai.DefaultAsyncHttpxClient(verify=shared_ssl_context())
        else:
            http_client = openai.DefaultAsyncHttpxClient(
                transport=LeanTransport(tls_context=shared_ssl_context)
            )
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=self.base_url, max_retries=0, http_client=http_client
        )
        adopt_platform(self._client)
        self._api_by_url: dict[str, str] = {}  # base URL -> "chat" once /responses was missing

    @classmethod
    def from_env(cls) -> LLMClient:
        """From OPENAI_API_KEY and OPENAI_BASE_URL.

        Raises:
            CredentialsMissing: OPENAI_API_KEY is not set.
        """
        check_credentials()
        return cls(os.environ["OPENAI_API_KEY"], base_url_from_env())

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, call: ModelCall) -> Turn:
        """Send one turn with the API the call asks for (auto: Responses, else chat).

        Raises:
            RetryableStepError: a transient failure worth another attempt.
            StepError: a failure that another attempt would repeat.
        """
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

    async def _send(self, method: Any, call: ModelCall) -> Turn:
        try:
            return await method(call)
        except Exception as exc:
            raise _classify(exc, self.base_url) from None

    # -- Responses API ----------------------------------------------------------------------
    async def _responses(self, call: ModelCall) -> Turn:
        # Fields in the order the SDK's `responses.create` sends them: the same bytes on the wire.
        body: dict[str, Any] = {"model": call.model, "input": responses_input(call.messages)}
        if call.system:
            body["instructions"] = call.system
        if call.max_output_tokens is not None:
            body["max_output_tokens"] = call.max_output_tokens
        body["store"] = False
        if call.temperature is not None:
            body["temperature"] = call.temperature
        if call.output_format:
            body["text"] = {"format": call.output_format}
        if call.tools:
            body["tools"] = call.tools
        return responses_turn(await self._post("/responses", body, call.timeout))

    async def _post(self, path: str, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """POST through the SDK (its auth, headers, errors, timeouts); the JSON object back.

        The body goes as built (it is already in wire form: the SDK's request transform would
        return it unchanged) and the answer is read as plain JSON, not the SDK's models.
        """
        raw = await self._client.post(
            path, cast_to=bytes, body=body, options={"timeout": timeout, "security": _BEARER}
        )
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise _malformed(self.base_url)
        return data

    # -- Chat Completions -------------------------------------------------------------------
    async def _chat(self, call: ModelCall) -> Turn:
        hosted = [t.get("type") for t in call.tools if t.get("type") != "function"]
        if hosted:
            raise StepError(
                f"hosted tools ({', '.join(hosted)}) need the Responses API, and this step "
                f"uses Chat Completions at {self.base_url}",
                "use api: responses with a provider that hosts them, or remove them from tools:",
            )
        messages = chat_messages(call.system, call.messages)
        # Fields in the order the SDK's `chat.completions.create` sends them.
        body: dict[str, Any] = {"model": call.model, "messages": messages}
        if call.max_output_tokens is not None:
            body["max_tokens"] = call.max_output_tokens
        fmt = call.output_format
        if fmt and fmt["type"] == "json_schema":
            inner = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
            body["response_format"] = {"type": "json_schema", "json_schema": inner}
        elif fmt:
            body["response_format"] = fmt
        if call.temperature is not None:
            body["temperature"] = call.temperature
        if call.tools:
            body["tools"] = [chat_tool(t) for t in call.tools]
        return chat_turn(await self._post("/chat/completions", body, call.timeout))


# -- errors ---------------------------------------------------------------------------------
def _classify(exc: Exception, base_url: str) -> Exception:
    """The StepChain error for an SDK failure (by type and status); other errors unchanged."""
    if isinstance(exc, openai.RateLimitError):
        return RetryableStepError(
            f"rate limited by the LLM server (429): {_server_message(exc)}",
            retry_after=_retry_after(exc.response.headers),
        )
    if isinstance(exc, openai.APITimeoutError):
        return RetryableStepError(f"the LLM request to {base_url} timed out")
    if isinstance(exc, openai.APIConnectionError):
        return RetryableStepError(f"cannot reach the LLM server at {base_url}: {exc}")
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return StepError(
            f"the LLM server refused the credentials ({exc.status_code}): {_server_message(exc)}",
            "check OPENAI_API_KEY (and OPENAI_BASE_URL if you use a compatible server)",
        )
    if isinstance(exc, openai.APIStatusError):
        status, message = exc.status_code, _server_message(exc)
        if status in (408, 409) or status >= 500:
            return RetryableStepError(f"the LLM server failed ({status}): {message}")
        if status == 404:
            return StepError(
                f"not found on the LLM server ({base_url}): {message}",
                "check the model name; for a server without the Responses API use api: chat",
            )
        return StepError(
            f"the LLM server rejected the request ({status}): {message}",
            "check the step's model, temperature, max_output_tokens, output_schema and tools",
        )
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return _malformed(base_url)
    return exc


def _malformed(base_url: str) -> RetryableStepError:
    return RetryableStepError(f"the LLM server at {base_url} sent a malformed response")


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()
    return exc.message


def _retry_after(headers: Any) -> float | None:
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
