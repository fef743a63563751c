"""The LLM client's fast path against the SDK's own: same requests on the wire, same answers.

`LLMClient` posts its request body through `AsyncOpenAI.post` (no request transform) and reads
the answer as plain JSON (no Response / ChatCompletion models). These tests send the same body
through the SDK's `responses.create` / `chat.completions.create` and compare what the server
received, then read the same answers through the SDK's models with the extraction the client
used before, and compare the turns.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import openai
import pytest
from stepchain.errors import RetryableStepError
from stepchain.llm.client import (
    LLMClient,
    ModelCall,
    ToolCall,
    Turn,
)
from stepchain.llm.output_format import json_schema_format
from stepchain.llm.shared import shared_ssl_context, warm_up

from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.fake_openai import ToolCall as FakeCall

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": ["number", "null"]}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}
FUNCTION = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up",
    "parameters": {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
        "additionalProperties": False,
    },
    "strict": True,
}
CONVERSATION = [
    {"role": "user", "content": "Find the price."},
    {"role": "assistant", "content": "", "calls": [ToolCall("call_1", "lookup", '{"q": "price"}')]},
    {"role": "tool", "call_id": "call_1", "content": "42 EUR"},
]
CALLS = {
    "plain": ModelCall(model="gpt-test", messages=[{"role": "user", "content": "Hi ünïcode"}]),
    "options": ModelCall(
        model="gpt-test",
        messages=[{"role": "user", "content": "Hi"}],
        system="Be terse.",
        temperature=0.2,
        max_output_tokens=64,
        timeout=30.0,
    ),
    "strict schema": ModelCall(
        model="gpt-test",
        messages=[{"role": "user", "content": "Rate it."}],
        output_format=json_schema_format(SCHEMA)[0],
    ),
    "wrapped schema": ModelCall(
        model="gpt-test",
        messages=[{"role": "user", "content": "List them."}],
        output_format=json_schema_format({"type": "array", "items": {"type": "string"}})[0],
    ),
    "json object": ModelCall(
        model="gpt-test",
        messages=[{"role": "user", "content": "JSON please."}],
        output_format={"type": "json_object"},
    ),
    "tool loop": ModelCall(model="gpt-test", messages=CONVERSATION, tools=[FUNCTION]),
}
HOSTED = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.com/mcp",
        "require_approval": "never",
        "allowed_tools": ["search"],
        "headers": {"Authorization": "Bearer x"},
    },
]
VOLATILE_HEADERS = {"idempotency-key", "x-stainless-retry-count", "content-length"}


@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def sdk_client(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test-key", base_url=fake.base_url, max_retries=0)


def complete(call: ModelCall) -> Turn:
    async def go() -> Turn:
        client = LLMClient.from_env()
        try:
            return await client.complete(call)
        finally:
            await client.aclose()

    return asyncio.run(go())


def via_sdk(fake: FakeOpenAI, endpoint: str, body: dict[str, Any], timeout: Any) -> Any:
    async def go() -> Any:
        async with sdk_client(fake) as client:
            create = (
                client.responses.create
                if endpoint == "responses"
                else client.chat.completions.create
            )
            return await create(**body, timeout=timeout)

    return asyncio.run(go())


def same_wire(fake: FakeOpenAI, endpoint: str, timeout: Any) -> None:
    """The last request, sent again through the SDK's create(), arrives identical."""
    ours = fake.requests_to(endpoint)[-1]
    via_sdk(fake, endpoint, ours.json, timeout)
    theirs = fake.requests_to(endpoint)[-1]
    assert theirs is not ours
    assert ours.body == theirs.body
    assert ours.path == theirs.path and ours.query == theirs.query
    strip = lambda h: {k: v for k, v in h.items() if k not in VOLATILE_HEADERS}  # noqa: E731
    assert strip(ours.headers) == strip(theirs.headers)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_responses_request_is_what_the_sdk_create_sends(fake, name):
    call = CALLS[name]
    complete(call)
    same_wire(fake, "responses", call.timeout)


def test_a_client_sends_the_platform_headers_the_sdk_would(fake):
    complete(CALLS[sorted(CALLS)[0]])  # the platform probed once per process, as the SDK does
    assert fake.requests_to("responses")[-1].headers["x-stainless-os"]
    same_wire(fake, "responses", CALLS[sorted(CALLS)[0]].timeout)


def test_hosted_tools_request_is_what_the_sdk_create_sends(fake):
    call = ModelCall(
        model="gpt-test", messages=[{"role": "user", "content": "Search."}], tools=HOSTED
    )
    complete(call)
    same_wire(fake, "responses", None)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_chat_request_is_what_the_sdk_create_sends(fake, name):
    call = CALLS[name]
    call = ModelCall(**{**call.__dict__, "api": "chat"})
    complete(call)
    same_wire(fake, "chat/completions", call.timeout)


# -- answers --------------------------------------------------------------------------------
def model_turn_responses(response: Any) -> Turn:
    """How the client read a Response model before it read JSON (the reference)."""
    usage = response.usage
    turn = Turn(text="", usage=_model_usage(usage, "responses"))
    texts = []
    for item in response.output or []:
        if item.type == "message":
            for part in item.content or []:
                if part.type == "output_text":
                    texts.append(part.text)
                elif part.type == "refusal":
                    turn.refusal = part.refusal
        elif item.type == "function_call":
            turn.calls.append(ToolCall(item.call_id, item.name, item.arguments or "{}"))
    turn.text = "".join(texts)
    details = getattr(response, "incomplete_details", None)
    turn.truncated = getattr(details, "reason", None) == "max_output_tokens"
    return turn


def model_turn_chat(completion: Any) -> Turn:
    choice = (completion.choices or [None])[0]
    message = getattr(choice, "message", None)
    turn = Turn(
        text=getattr(message, "content", None) or "",
        usage=_model_usage(completion.usage, "chat"),
        refusal=getattr(message, "refusal", None),
        truncated=getattr(choice, "finish_reason", None) == "length",
    )
    for tc in getattr(message, "tool_calls", None) or []:
        turn.calls.append(ToolCall(tc.id, tc.function.name, tc.function.arguments or "{}"))
    return turn


def _model_usage(usage: Any, api: str) -> dict[str, int]:
    if usage is None:
        return {}
    names = (
        ("input_tokens", "output_tokens", "input_tokens_details")
        if api == "responses"
        else ("prompt_tokens", "completion_tokens", "prompt_tokens_details")
    )
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


def _response(output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-test",
        "status": "completed",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        **extra,
    }


def _message(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": list(parts),
    }


REFUSAL = _response([_message({"type": "refusal", "refusal": "I can't help with that."})])
TRUNCATED = _response(
    [_message({"type": "output_text", "text": "Half an ans", "annotations": []})],
    status="incomplete",
    incomplete_details={"reason": "max_output_tokens"},
    usage={
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 16,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 28,
    },
)
CHAT_REFUSAL = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-test",
    "choices": [
        {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": "Cut", "refusal": "partly refused"},
        }
    ],
}
RESPONSES_REPLIES = {
    "text": Reply.text("Hello there.", input_tokens=7, output_tokens=3, cached_tokens=2),
    "no usage": Reply(message="Quiet.", include_usage=False),
    "calls": Reply.tool_calls(
        FakeCall("lookup", {"q": "a"}, "call_a"),
        FakeCall("lookup", '{"q": broken', "call_b"),
        text="Looking.",
    ),
    "json": Reply.json({"answer": "yes", "score": 1}),
    "refusal": Reply.raw(200, json.dumps(REFUSAL)),
    "truncated": Reply.raw(200, json.dumps(TRUNCATED)),
}
CHAT_REPLIES = {
    **{k: v for k, v in RESPONSES_REPLIES.items() if k not in ("refusal", "truncated")},
    "refusal": Reply.raw(200, json.dumps(CHAT_REFUSAL)),
}


@pytest.mark.parametrize("name", sorted(RESPONSES_REPLIES))
def test_responses_answer_reads_as_the_sdk_model_does(fake, name):
    call = ModelCall(model="gpt-test", messages=[{"role": "user", "content": "Hi"}])
    fake.script(RESPONSES_REPLIES[name], RESPONSES_REPLIES[name])
    ours = complete(call)
    reference = model_turn_responses(via_sdk(fake, "responses", {"model": "m", "input": "x"}, 5))
    assert ours == reference


@pytest.mark.parametrize("name", sorted(CHAT_REPLIES))
def test_chat_answer_reads_as_the_sdk_model_does(fake, name):
    call = ModelCall(model="gpt-test", messages=[{"role": "user", "content": "Hi"}], api="chat")
    fake.script_chat(CHAT_REPLIES[name], CHAT_REPLIES[name])
    ours = complete(call)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    reference = model_turn_chat(via_sdk(fake, "chat/completions", body, 5))
    assert ours == reference


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "null"])
def test_an_answer_that_is_not_a_json_object_is_a_retryable_malformed_response(fake, body):
    fake.script(Reply.raw(200, body))
    with pytest.raises(RetryableStepError, match="malformed response"):
        complete(ModelCall(model="gpt-test", messages=[{"role": "user", "content": "Hi"}]))


# -- the client -----------------------------------------------------------------------------
def test_clients_share_one_tls_context_and_use_the_sdk_defaults(fake):
    async def go() -> list[Any]:
        clients = [LLMClient.from_env(), LLMClient.from_env()]
        try:
            return [c._client for c in clients]
        finally:
            for c in clients:
                await c.aclose()

    first, second = asyncio.run(go())
    assert shared_ssl_context() is shared_ssl_context()
    reference = sdk_client(fake)
    for sdk in (first, second):
        assert sdk.max_retries == 0
        assert sdk.timeout == reference.timeout
        assert sdk._client.follow_redirects is True
    asyncio.run(reference.close())


def test_tls_warm_up_builds_the_context_the_clients_share(monkeypatch):
    paths = ssl.get_default_verify_paths()
    cafile = next(
        (f for f in (paths.cafile, paths.openssl_cafile) if f and Path(f).is_file()), None
    )
    if cafile is None:
        pytest.skip("no CA file on this machine")
    monkeypatch.setenv("SSL_CERT_FILE", cafile)  # a key no other test has built
    assert warm_up("http://127.0.0.1:1/v1") is None  # plain http: no TLS context to build
    warm_up("https://api.openai.com/v1")
    context = shared_ssl_context()  # waits for the warm-up thread, or builds it
    assert context is shared_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
