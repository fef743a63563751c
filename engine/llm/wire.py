"""The neutral conversation and the two APIs' answers: what the LLM client speaks.

Callers speak a neutral conversation (`user`, `assistant` with tool calls, `tool` results) in a
`ModelCall` and get back a `Turn`. This module converts the conversation into the Responses API's
`input` items or Chat Completions' `messages`, and reads either API's answer (text, tool calls,
refusal, truncation, token usage) from the JSON object the server sent, as the SDK's `to_dict()`
gives it. An answer without what its API always sends (`output` items, a `choices[0].message`,
a named function call, the `text` of an `output_text`), or with nothing to read (neither text,
nor a refusal, nor a call, and not cut off), raises `MalformedAnswer`: it is never read as an
empty output. Nothing here needs the `openai` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    # the answer's HTTP headers (lower-case names), e.g. x-ratelimit-*; not part of equality
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


class MalformedAnswer(ValueError):
    """The server's answer lacks what its API always sends."""


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


# -- answers --------------------------------------------------------------------------------
def responses_turn(response: dict[str, Any]) -> Turn:
    """The turn in a Responses API answer; MalformedAnswer without its `output` items."""
    turn = Turn(text="", usage=_usage(response.get("usage"), "responses"))
    texts = []
    answered = False  # a text (even ""), a refusal or a call: something to read
    for item in _objects(response.get("output"), "output"):
        kind = item.get("type")
        if kind == "message":
            for part in _objects(item.get("content"), "message content"):
                if part.get("type") == "output_text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise MalformedAnswer("an output_text without its text")
                    texts.append(text)
                    answered = True
                elif part.get("type") == "refusal":
                    turn.refusal = _text(part.get("refusal"), "refusal") or None
                    answered = True
        elif kind == "function_call":
            turn.calls.append(_tool_call(item.get("call_id"), item))
            answered = True
    turn.text = "".join(texts)
    turn.truncated = _field(response.get("incomplete_details"), "reason") == "max_output_tokens"
    if not answered and not turn.truncated:
        raise MalformedAnswer("no message and no function call in output")
    return turn


def chat_turn(completion: dict[str, Any]) -> Turn:
    """The turn in a Chat Completions answer; MalformedAnswer without `choices[0].message`."""
    choices = _objects(completion.get("choices"), "choices")
    message = _field(choices[0], "message") if choices else None
    if not isinstance(message, dict):
        raise MalformedAnswer("no choices[0].message")
    turn = Turn(
        text=_text(message.get("content"), "message content"),
        usage=_usage(completion.get("usage"), "chat"),
        refusal=_text(message.get("refusal"), "refusal") or None,
        truncated=choices[0].get("finish_reason") == "length",
    )
    for tc in _objects(message.get("tool_calls") or [], "tool_calls"):
        if tc.get("type", "function") == "function":
            function = tc.get("function")
            if not isinstance(function, dict):
                raise MalformedAnswer("a tool call without its function")
            turn.calls.append(_tool_call(tc.get("id"), function))
    if message.get("content") is None and not (turn.calls or turn.refusal or turn.truncated):
        raise MalformedAnswer("a message without content, refusal or tool calls")
    return turn


def _tool_call(call_id: Any, function: dict[str, Any]) -> ToolCall:
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedAnswer("a function call without a name")
    arguments = _text(function.get("arguments"), "function call arguments") or "{}"
    return ToolCall(call_id if isinstance(call_id, str) else "", name, arguments)


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    """The objects of a JSON array; MalformedAnswer for anything else, or anything else in it."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MalformedAnswer(f"{what} is not a list of objects")
    return value


def _text(value: Any, what: str) -> str:
    """A string field that may be null (as ""); MalformedAnswer for anything else."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedAnswer(f"{what} is not text")
    return value


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None


# -- conversation conversion ----------------------------------------------------------------
def responses_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def chat_messages(system: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {
        k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None
    }
    if tool.get("strict"):
        function["strict"] = True
    return {"type": "function", "function": function}


def _usage(usage: Any, api: str) -> dict[str, int]:
    """{input_tokens, output_tokens, cached_tokens, total_tokens} from either API's usage."""
    if not isinstance(usage, dict):
        return {}
    if api == "responses":
        names = ("input_tokens", "output_tokens", "input_tokens_details")
    else:
        names = ("prompt_tokens", "completion_tokens", "prompt_tokens_details")
    inp = usage.get(names[0]) or 0
    out = usage.get(names[1]) or 0
    cached = _field(usage.get(names[2]), "cached_tokens") or 0
    total = usage.get("total_tokens") or inp + out
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": cached,
        "total_tokens": total,
    }
