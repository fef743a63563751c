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
- Structured output: strict mode needs every object closed (`additionalProperties: false`)
  with all its properties required, and a subset of JSON Schema. A user's schema is sent
  with `strict: true` only when it meets those rules; otherwise it is sent with
  `strict: false` as guidance, and the answer is validated locally with jsonschema (a
  mismatch is retried with the validation error fed back). A schema whose root is not an
  object is wrapped as `{"value": ...}` on the wire, since providers require an object root.
- Chat Completions gets `max_tokens` (what compatible servers such as Ollama, vLLM and
  llama.cpp accept) and cannot carry hosted tools.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from stepchain.errors import CredentialsMissing, RetryableStepError, StepError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_MODES = ("auto", "responses", "chat")
_CLOSED_ONLY = {"allOf", "oneOf", "not", "if", "then", "else", "patternProperties",
                "dependentRequired", "dependentSchemas", "unevaluatedProperties",
                "propertyNames", "minProperties", "maxProperties"}  # fmt: skip


def check_credentials() -> None:
    """Fail with one clear line when no API key is configured."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise CredentialsMissing(
            "LLM steps need credentials: set OPENAI_API_KEY (and OPENAI_BASE_URL for a compatible "
            "server such as Ollama or vLLM; a local server without auth accepts any value, "
            "e.g. OPENAI_API_KEY=local)"
        )


@dataclass(frozen=True)
class ToolCall:
    """A function call the model asked for; `arguments` is the JSON text it sent."""

    id: str
    name: str
    arguments: str


@dataclass
class Turn:
    """One model answer: text and/or tool calls, with normalised token usage."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    refusal: str | None = None
    truncated: bool = False  # cut off by max_output_tokens


@dataclass
class ModelCall:
    """One request. `messages` are neutral: user, assistant (with `calls`), tool (`call_id`)."""

    model: str
    messages: list[dict[str, Any]]
    system: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    output_format: dict[str, Any] | None = None  # json_schema_format() or {"type": "json_object"}
    tools: list[dict[str, Any]] = field(default_factory=list)  # Responses-shaped definitions
    api: str = "auto"
    timeout: float | None = None


class LLMClient:
    """An async OpenAI-compatible client with StepChain's error and usage semantics."""

    def __init__(self, api_key: str, base_url: str | None = None) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=self.base_url, max_retries=0)
        self._api_by_url: dict[str, str] = {}  # base URL -> "chat" once /responses was missing

    @classmethod
    def from_env(cls) -> LLMClient:
        """From OPENAI_API_KEY and OPENAI_BASE_URL.

        Raises:
            CredentialsMissing: OPENAI_API_KEY is not set.
        """
        check_credentials()
        return cls(os.environ["OPENAI_API_KEY"], os.environ.get("OPENAI_BASE_URL") or None)

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
        kwargs: dict[str, Any] = {"model": call.model, "input": _responses_input(call.messages)}
        kwargs["store"] = False
        if call.system:
            kwargs["instructions"] = call.system
        if call.temperature is not None:
            kwargs["temperature"] = call.temperature
        if call.max_output_tokens is not None:
            kwargs["max_output_tokens"] = call.max_output_tokens
        if call.output_format:
            kwargs["text"] = {"format": call.output_format}
        if call.tools:
            kwargs["tools"] = call.tools
        response = await self._client.responses.create(**kwargs, timeout=call.timeout)
        turn = Turn(text="", usage=_usage(getattr(response, "usage", None), "responses"))
        texts = []
        for item in getattr(response, "output", None) or []:
            kind = getattr(item, "type", None)
            if kind == "message":
                for part in getattr(item, "content", None) or []:
                    if getattr(part, "type", None) == "output_text":
                        texts.append(part.text)
                    elif getattr(part, "type", None) == "refusal":
                        turn.refusal = part.refusal
            elif kind == "function_call":
                turn.calls.append(ToolCall(item.call_id, item.name, item.arguments or "{}"))
        turn.text = "".join(texts)
        details = getattr(response, "incomplete_details", None)
        turn.truncated = getattr(details, "reason", None) == "max_output_tokens"
        return turn

    # -- Chat Completions -------------------------------------------------------------------
    async def _chat(self, call: ModelCall) -> Turn:
        hosted = [t.get("type") for t in call.tools if t.get("type") != "function"]
        if hosted:
            raise StepError(
                f"hosted tools ({', '.join(hosted)}) need the Responses API, and this step "
                f"uses Chat Completions at {self.base_url}",
                "use api: responses with a provider that hosts them, or remove them from tools:",
            )
        messages = _chat_messages(call.system, call.messages)
        kwargs: dict[str, Any] = {"model": call.model, "messages": messages}
        if call.temperature is not None:
            kwargs["temperature"] = call.temperature
        if call.max_output_tokens is not None:
            kwargs["max_tokens"] = call.max_output_tokens
        fmt = call.output_format
        if fmt and fmt["type"] == "json_schema":
            inner = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
            kwargs["response_format"] = {"type": "json_schema", "json_schema": inner}
        elif fmt:
            kwargs["response_format"] = fmt
        if call.tools:
            kwargs["tools"] = [_chat_tool(t) for t in call.tools]
        completion = await self._client.chat.completions.create(**kwargs, timeout=call.timeout)
        choice = (getattr(completion, "choices", None) or [None])[0]
        message = getattr(choice, "message", None)
        turn = Turn(
            text=getattr(message, "content", None) or "",
            usage=_usage(getattr(completion, "usage", None), "chat"),
            refusal=getattr(message, "refusal", None),
            truncated=getattr(choice, "finish_reason", None) == "length",
        )
        for tc in getattr(message, "tool_calls", None) or []:
            if getattr(tc, "type", "function") == "function":
                turn.calls.append(ToolCall(tc.id, tc.function.name, tc.function.arguments or "{}"))
        return turn


# -- conversation conversion ----------------------------------------------------------------
def _responses_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            items.append(
                {"type": "function_call_output", "call_id": m["call_id"], "output": m["content"]}
            )
            continue
        if m.get("content"):
            items.append({"role": m["role"], "content": m["content"]})
        for c in m.get("calls", ()):
            items.append(
                {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
            )
    return items


def _chat_messages(system: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["call_id"], "content": m["content"]})
        elif m.get("calls"):
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m["calls"]
            ]
            out.append(
                {"role": "assistant", "content": m.get("content") or None, "tool_calls": calls}
            )
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {
        k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None
    }
    if tool.get("strict"):
        function["strict"] = True
    return {"type": "function", "function": function}


def _usage(usage: Any, api: str) -> dict[str, int]:
    """{input_tokens, output_tokens, cached_tokens, total_tokens} from either API's usage."""
    if usage is None:
        return {}
    if api == "responses":
        names = ("input_tokens", "output_tokens", "input_tokens_details")
    else:
        names = ("prompt_tokens", "completion_tokens", "prompt_tokens_details")
    inp = getattr(usage, names[0], None) or 0
    out = getattr(usage, names[1], None) or 0
    cached = getattr(getattr(usage, names[2], None), "cached_tokens", None) or 0
    total = getattr(usage, "total_tokens", None) or inp + out
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": cached,
        "total_tokens": total,
    }


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
        return RetryableStepError(f"the LLM server at {base_url} sent a malformed response")
    return exc


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


# -- structured output ----------------------------------------------------------------------
def json_schema_format(schema: dict[str, Any], name: str = "output") -> tuple[dict[str, Any], bool]:
    """The `text.format` for a user schema, and whether the root was wrapped as {"value": ...}."""
    wrapped = schema.get("type") != "object"
    wire = schema
    if wrapped:
        inner = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
        wire = {"type": "object", "properties": {"value": inner}, "required": ["value"]}
        wire["additionalProperties"] = False
        wire.update({k: schema[k] for k in ("$defs", "definitions") if k in schema})
    fmt = {"type": "json_schema", "name": name, "schema": wire, "strict": strict_compatible(wire)}
    return fmt, wrapped


def strict_compatible(schema: Any) -> bool:
    """Whether a schema meets strict structured output's rules (closed, all-required objects)."""
    if not isinstance(schema, dict):
        return False  # boolean schemas are not allowed in strict mode
    if _CLOSED_ONLY & set(schema):
        return False
    types = schema.get("type")
    is_object = types == "object" or (isinstance(types, list) and "object" in types)
    if is_object or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False or set(
            schema.get("required") or []
        ) != set(props):
            return False
    children: list[Any] = list((schema.get("properties") or {}).values())
    children += list((schema.get("$defs") or {}).values()) + list(
        (schema.get("definitions") or {}).values()
    )
    children += list(schema.get("anyOf") or []) + list(schema.get("prefixItems") or [])
    if "items" in schema:
        children.append(schema["items"])
    return all(strict_compatible(child) for child in children)
