"""The neutral conversation and the two wire formats' answers: what the LLM client speaks.

Callers speak a neutral conversation (`user`, `assistant` with tool calls, `tool` results) in a
`ModelCall` and get back a `Turn`. This module converts the conversation into the Responses API's
`input` items or Chat Completions' `messages`, and reads either API's JSON answer (text, tool
calls, refusal, truncation, token usage) without the SDK's response models. Nothing here needs
the `openai` package.
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
    turn = Turn(text="", usage=_usage(response.get("usage"), "responses"))
    texts = []
    for item in _items(response.get("output")):
        kind = item.get("type")
        if kind == "message":
            for part in _items(item.get("content")):
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    turn.refusal = part.get("refusal")
        elif kind == "function_call":
            turn.calls.append(_tool_call(item.get("call_id"), item))
    turn.text = "".join(texts)
    turn.truncated = _field(response.get("incomplete_details"), "reason") == "max_output_tokens"
    return turn


def chat_turn(completion: dict[str, Any]) -> Turn:
    choice = next(iter(_items(completion.get("choices"))), {})
    message = _field(choice, "message") or {}
    turn = Turn(
        text=_field(message, "content") or "",
        usage=_usage(completion.get("usage"), "chat"),
        refusal=_field(message, "refusal"),
        truncated=choice.get("finish_reason") == "length",
    )
    for tc in _items(_field(message, "tool_calls")):
        if tc.get("type", "function") == "function":
            turn.calls.append(_tool_call(tc.get("id"), _field(tc, "function") or {}))
    return turn


def _tool_call(call_id: Any, function: dict[str, Any]) -> ToolCall:
    return ToolCall(call_id or "", function.get("name") or "", function.get("arguments") or "{}")


def _items(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON array (anything else in it, or a non-array, is skipped)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


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
