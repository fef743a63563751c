"""`LLMClient` on the wire: what the server receives for each kind of call, how each answer
reads, and which failures are retried — over real sockets on 127.0.0.1 (`FakeOpenAI`, and
`RawServer` for bytes no API server would send)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from stepchain.errors import RateLimited, RetryableStepError, StepError
from stepchain.llm.client import RESENDS_WITHOUT_DEADLINE, LLMClient, ModelCall, ToolCall, Turn
from stepchain.llm.output_format import json_schema_format

from tests.support.fake_openai import FakeOpenAI, Reply
from tests.support.fake_openai import ToolCall as FakeCall
from tests.support.raw_http import RawServer, then_close

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": ["number", "null"]}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}
LIST_SCHEMA = {"type": "array", "items": {"type": "string"}}
WRAPPED = {
    "type": "object",
    "properties": {"value": LIST_SCHEMA},
    "required": ["value"],
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
HI = [{"role": "user", "content": "Hi"}]

# name -> (call, the Responses body the server must receive, the chat body; None: not on chat)
CASES: dict[str, tuple[ModelCall, dict[str, Any], dict[str, Any] | None]] = {
    "plain": (
        ModelCall(model="gpt-test", messages=[{"role": "user", "content": "Hi ünïcode"}]),
        {"model": "gpt-test", "input": [{"role": "user", "content": "Hi ünïcode"}]},
        {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi ünïcode"}]},
    ),
    "options": (
        ModelCall(
            model="gpt-test",
            messages=HI,
            system="Be terse.",
            temperature=0.2,
            max_output_tokens=64,
            timeout=30.0,
        ),
        {
            "model": "gpt-test",
            "input": HI,
            "instructions": "Be terse.",
            "max_output_tokens": 64,
            "temperature": 0.2,
        },
        {
            "model": "gpt-test",
            "messages": [{"role": "system", "content": "Be terse."}, *HI],
            "max_tokens": 64,
            "temperature": 0.2,
        },
    ),
    "strict schema": (
        ModelCall(model="gpt-test", messages=HI, output_format=json_schema_format(SCHEMA)[0]),
        {
            "model": "gpt-test",
            "input": HI,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "output",
                    "schema": SCHEMA,
                    "strict": True,
                }
            },
        },
        {
            "model": "gpt-test",
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": SCHEMA, "strict": True},
            },
        },
    ),
    "wrapped schema": (
        ModelCall(model="gpt-test", messages=HI, output_format=json_schema_format(LIST_SCHEMA)[0]),
        {
            "model": "gpt-test",
            "input": HI,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "output",
                    "schema": WRAPPED,
                    "strict": True,
                }
            },
        },
        {
            "model": "gpt-test",
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": WRAPPED, "strict": True},
            },
        },
    ),
    "json object": (
        ModelCall(model="gpt-test", messages=HI, output_format={"type": "json_object"}),
        {"model": "gpt-test", "input": HI, "text": {"format": {"type": "json_object"}}},
        {"model": "gpt-test", "messages": HI, "response_format": {"type": "json_object"}},
    ),
    "tool loop": (
        ModelCall(model="gpt-test", messages=CONVERSATION, tools=[FUNCTION]),
        {
            "model": "gpt-test",
            "input": [
                {"role": "user", "content": "Find the price."},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "lookup",
                    "arguments": '{"q": "price"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "42 EUR"},
            ],
            "tools": [FUNCTION],
        },
        {
            "model": "gpt-test",
            "messages": [
                {"role": "user", "content": "Find the price."},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "price"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "42 EUR"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "description": "Look something up",
                        "parameters": FUNCTION["parameters"],
                        "strict": True,
                    },
                }
            ],
        },
    ),
    "hosted tools": (
        ModelCall(model="gpt-test", messages=HI, tools=HOSTED),
        {"model": "gpt-test", "input": HI, "tools": HOSTED},
        None,
    ),
}


@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def complete(*calls: ModelCall, base_url: str | None = None) -> list[Turn]:
    """The turns of `calls`, one after another, through one client (from the environment, or
    for `base_url`), closed afterwards."""

    async def go() -> list[Turn]:
        client = LLMClient("test-key", base_url) if base_url else LLMClient.from_env()
        try:
            return [await client.complete(call) for call in calls]
        finally:
            await client.aclose()

    return asyncio.run(go())


def with_api(call: ModelCall, api: str) -> ModelCall:
    return ModelCall(**{**call.__dict__, "api": api})


# -- requests -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_responses_request_is_the_call_stateless_and_nothing_else(fake, name):
    call, expected, _ = CASES[name]
    complete(call)
    [request] = fake.requests_to("responses")
    assert request.json == {**expected, "store": False}
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.headers["content-type"] == "application/json"
    assert "previous_response_id" not in request.json


@pytest.mark.parametrize("name", sorted(k for k, v in CASES.items() if v[2] is not None))
def test_chat_request_is_the_call_and_nothing_else(fake, name):
    call, _, expected = CASES[name]
    complete(with_api(call, "chat"))
    [request] = fake.requests_to("chat")
    assert request.json == expected
    assert request.headers["authorization"] == "Bearer test-key"
    assert fake.requests_to("responses") == []


def test_a_calls_timeout_is_the_requests_timeout(fake):
    complete(CASES["options"][0], with_api(CASES["options"][0], "chat"), CASES["plain"][0])
    timed, timed_chat, default = fake.requests
    assert float(timed.headers["x-stainless-read-timeout"]) == 30.0
    assert float(timed_chat.headers["x-stainless-read-timeout"]) == 30.0
    assert float(default.headers["x-stainless-read-timeout"]) == 600.0  # the SDK's default


def test_hosted_tools_are_refused_on_chat_before_any_request(fake):
    with pytest.raises(StepError, match=r"hosted tools \(web_search, file_search"):
        complete(with_api(CASES["hosted tools"][0], "chat"))
    assert fake.requests == []


# -- answers --------------------------------------------------------------------------------
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


def _completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
    }


USAGE = {"input_tokens": 7, "output_tokens": 3, "cached_tokens": 2, "total_tokens": 10}
CALLS = [ToolCall("call_a", "lookup", '{"q": "a"}'), ToolCall("call_b", "lookup", '{"q": broken')]
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
# name -> (the reply, the turn it reads as)
ANSWERS: dict[str, tuple[Reply, Turn]] = {
    "text": (
        Reply.text("Hello there.", input_tokens=7, output_tokens=3, cached_tokens=2),
        Turn("Hello there.", usage=USAGE),
    ),
    "no usage": (Reply(message="Quiet.", include_usage=False), Turn("Quiet.")),
    "calls": (
        Reply.tool_calls(
            FakeCall("lookup", {"q": "a"}, "call_a"),
            FakeCall("lookup", '{"q": broken', "call_b"),
            text="Looking.",
            input_tokens=7,
            output_tokens=3,
            cached_tokens=2,
        ),
        Turn("Looking.", calls=CALLS, usage=USAGE),
    ),
    "json": (
        Reply.json({"answer": "yes", "score": 1}, input_tokens=7, output_tokens=3, cached_tokens=2),
        Turn('{"answer": "yes", "score": 1}', usage=USAGE),
    ),
}
RESPONSES_ONLY: dict[str, tuple[Reply, Turn]] = {
    "refusal": (
        Reply.raw(200, json.dumps(_response([_message({"type": "refusal", "refusal": "No."})]))),
        Turn("", refusal="No."),
    ),
    "truncated": (
        Reply.raw(200, json.dumps(TRUNCATED)),
        Turn(
            "Half an ans",
            truncated=True,
            usage={"input_tokens": 12, "output_tokens": 16, "cached_tokens": 8, "total_tokens": 28},
        ),
    ),
    "hosted tool items": (
        Reply.raw(
            200,
            json.dumps(
                _response(
                    [
                        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                        _message({"type": "output_text", "text": "Found it.", "annotations": []}),
                    ]
                )
            ),
        ),
        Turn("Found it."),
    ),
}
CHAT_ONLY: dict[str, tuple[Reply, Turn]] = {
    "refusal and length": (
        Reply.raw(
            200,
            json.dumps(
                _completion(
                    {"role": "assistant", "content": "Cut", "refusal": "partly refused"},
                    finish_reason="length",
                )
            ),
        ),
        Turn("Cut", refusal="partly refused", truncated=True),
    ),
    "null content with calls": (
        Reply.raw(
            200,
            json.dumps(
                _completion(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_a",
                                "type": "function",
                                "function": {"name": "lookup", "arguments": '{"q": "a"}'},
                            }
                        ],
                    },
                    finish_reason="tool_calls",
                )
            ),
        ),
        Turn("", calls=CALLS[:1]),
    ),
}


@pytest.mark.parametrize("name", sorted({**ANSWERS, **RESPONSES_ONLY}))
def test_responses_answer_reads_as_a_turn(fake, name):
    reply, expected = {**ANSWERS, **RESPONSES_ONLY}[name]
    fake.script_responses(reply)
    [turn] = complete(ModelCall(model="gpt-test", messages=HI))
    assert turn == expected
    assert (turn.refusal, turn.truncated, turn.usage) == (
        expected.refusal,
        expected.truncated,
        expected.usage,
    )


@pytest.mark.parametrize("name", sorted({**ANSWERS, **CHAT_ONLY}))
def test_chat_answer_reads_as_a_turn(fake, name):
    reply, expected = {**ANSWERS, **CHAT_ONLY}[name]
    fake.script_chat(reply)
    [turn] = complete(ModelCall(model="gpt-test", messages=HI, api="chat"))
    assert turn == expected


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_a_turn_carries_the_answers_http_headers(fake, api):
    limits = {"x_ratelimit_remaining_requests": "99", "x_ratelimit_reset_tokens": "6ms"}
    fake.script(Reply.text("hi").with_headers(**limits))
    [turn] = complete(ModelCall(model="gpt-test", messages=HI, api=api))
    assert turn.headers["x-ratelimit-remaining-requests"] == "99"
    assert turn.headers["x-ratelimit-reset-tokens"] == "6ms"
    assert turn.headers["x-request-id"].startswith("req_fake_")
    assert turn.headers["content-type"] == "application/json"


# -- malformed answers: retryable errors, never empty outputs ------------------------------
NOT_JSON = ["{not json", "", "[1, 2]", '"text"', "null", "42"]
MALFORMED_RESPONSES = [
    "{}",
    '{"output": "x"}',
    '{"output": [1, 2]}',
    '{"output": [{"type": "message", "content": "not a list"}]}',
    '{"output": [{"type": "message", "content": [{"type": "output_text", "text": 5}]}]}',
    '{"output": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}',
    '{"output": []}',
    '{"output": [{"type": "message", "content": [{"type": "output_text"}]}]}',
]
MALFORMED_CHAT = [
    "{}",
    '{"choices": []}',
    '{"choices": "x"}',
    '{"choices": [{"index": 0}]}',
    '{"choices": [{"message": {"role": "assistant", "content": 5}}]}',
    '{"choices": [{"message": {"content": null, "tool_calls": [{"type": "function"}]}}]}',
    '{"choices": [{"message": {"content": null, "tool_calls": "x"}}]}',
    '{"choices": [{"message": {"role": "assistant", "content": null}}]}',
]


@pytest.mark.parametrize(
    ("api", "body"),
    [("responses", b) for b in NOT_JSON + MALFORMED_RESPONSES]
    + [("chat", b) for b in NOT_JSON + MALFORMED_CHAT],
)
def test_a_malformed_answer_is_a_retryable_error(fake, api, body):
    fake.script(Reply.raw(200, body), "after")
    call = ModelCall(model="gpt-test", messages=HI, api=api)
    with pytest.raises(RetryableStepError, match=r"sent a malformed response$"):
        complete(call)
    assert complete(call)[0].text == "after"  # the next attempt is a new request


def test_an_answer_that_is_not_json_at_all_is_a_retryable_error(fake):
    fake.script(Reply.raw(200, "<html>Sign in to the Wi-Fi</html>", content_type="text/html"))
    with pytest.raises(RetryableStepError, match="malformed response"):
        complete(ModelCall(model="gpt-test", messages=HI))


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id"',
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"id"\r\n10\r\nshort',
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
)
def test_an_answer_cut_off_or_not_http_is_a_retryable_error(answer):
    with RawServer(then_close(answer)) as server:
        with pytest.raises(RetryableStepError, match=r"^cannot reach the LLM server at "):
            complete(ModelCall(model="gpt-test", messages=HI), base_url=server.url + "/v1")
        assert len(server.requests) == 1


# -- transport failures and statuses --------------------------------------------------------
def test_a_dropped_connection_is_a_retryable_cannot_reach_error(fake):
    fake.script(Reply.disconnect(), "after")
    with pytest.raises(RetryableStepError) as failure:
        complete(ModelCall(model="gpt-test", messages=HI))
    assert str(failure.value).startswith(f"cannot reach the LLM server at {fake.base_url}: ")
    assert complete(ModelCall(model="gpt-test", messages=HI))[0].text == "after"


def test_a_refused_connection_says_why():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(RetryableStepError) as failure:
        complete(ModelCall(model="gpt-test", messages=HI), base_url=url)
    message = str(failure.value)
    assert message.startswith(f"cannot reach the LLM server at {url}: ")
    assert message != f"cannot reach the LLM server at {url}: Connection error."  # the cause


def test_a_hung_server_is_a_retryable_timeout(fake):
    fake.script(Reply.hang(), "after")
    with pytest.raises(RetryableStepError, match=r"^the LLM request to .* timed out$"):
        complete(ModelCall(model="gpt-test", messages=HI, timeout=0.3))
    assert complete(ModelCall(model="gpt-test", messages=HI))[0].text == "after"


@pytest.mark.parametrize(
    ("reply", "retryable", "text"),
    [
        (Reply.server_error(500), True, "the LLM server failed (500): The server had an error"),
        (Reply.error(408, "slow"), True, "the LLM server failed (408): slow"),
        (Reply.unauthorized(), False, "refused the credentials (401)"),
        (Reply.error(403, "no access"), False, "refused the credentials (403)"),
        (Reply.bad_request("bad temperature"), False, "rejected the request (400): bad temp"),
        (Reply.error(422, "unprocessable"), False, "rejected the request (422)"),
    ],
)
def test_statuses_are_classified_and_sent_once(fake, reply, retryable, text):
    fake.script(reply)
    with pytest.raises(StepError) as failure:
        complete(ModelCall(model="gpt-test", messages=HI, api="responses"))
    assert isinstance(failure.value, RetryableStepError) is retryable
    assert text in str(failure.value)
    assert len(fake.requests) == 1  # the SDK never retries: the scheduler does


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "0.2"}, 0.2),
        ({"retry-after-ms": "300", "Retry-After": "9"}, 0.3),
        ({"Retry-After": "soon"}, 0.5),  # unreadable: the limiter's own backoff
        ({}, 0.5),
        ({"x-ratelimit-reset-requests": "250ms"}, 0.25),  # the reset the headers announced
    ],
)
def test_a_429_pauses_for_the_servers_retry_after_then_sends_again(fake, headers, seconds):
    fake.script(Reply.error(429, "slow down", headers=headers), "after the pause")
    assert complete(ModelCall(model="gpt-test", messages=HI))[0].text == "after the pause"
    first, second = fake.requests
    assert second.received_at - first.received_at >= seconds


def test_retry_after_as_an_http_date_counts_down_from_now(fake):
    fake.script(Reply.error(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), "ok")
    assert complete(ModelCall(model="gpt-test", messages=HI))[0].text == "ok"  # no wait
    assert len(fake.requests) == 2


def test_without_a_deadline_429s_are_sent_again_a_bounded_number_of_times(fake):
    fake.default = Reply.rate_limit(retry_after=0)
    with pytest.raises(RateLimited) as failure:
        complete(ModelCall(model="gpt-test", messages=HI))
    assert str(failure.value).startswith("rate limited by the LLM server (429)")
    assert failure.value.retryable and failure.value.kind == "rate_limit"
    assert len(fake.requests) == RESENDS_WITHOUT_DEADLINE + 1


# -- api: auto ------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 405])
def test_auto_falls_back_to_chat_and_remembers_it(status):
    with FakeOpenAI(responses_api=False, missing_status=status) as fake:
        turns = complete(
            ModelCall(model="m", messages=HI),
            ModelCall(model="m", messages=HI),
            base_url=fake.base_url,
        )
        assert [t.text for t in turns] == ["ok", "ok"]
        assert len(fake.requests_to("responses")) == 1
        assert len(fake.requests_to("chat")) == 2


def test_auto_with_a_model_neither_endpoint_knows_fails_at_once(fake):
    fake.script_responses(Reply.not_found("no such model"))
    fake.script_chat(Reply.not_found("no such model"))
    with pytest.raises(StepError, match=r"not found on the LLM server .*: no such model") as info:
        complete(ModelCall(model="gpt-nope", messages=HI))
    assert not isinstance(info.value, RetryableStepError)
    assert "check the model name" in (info.value.hint or "")


def test_auto_keeps_the_responses_api_when_the_server_has_it(fake):
    complete(ModelCall(model="m", messages=HI), ModelCall(model="m", messages=HI))
    assert len(fake.requests_to("responses")) == 2
    assert fake.requests_to("chat") == []
