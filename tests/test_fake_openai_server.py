"""Tests for the fake OpenAI server, driven through the real ``openai`` SDK over HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time

import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall, request_text, serve

FUNCTION_TOOL = {
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
CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up",
        "parameters": FUNCTION_TOOL["parameters"],
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def make_client(fake: FakeOpenAI, **kwargs) -> openai.OpenAI:
    # _strict_response_validation makes the SDK itself validate every body against its models.
    # verify=False skips loading the CA bundle (~0.1 s per client); the server is plain HTTP.
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("api_key", "test")
    return openai.OpenAI(
        base_url=fake.base_url,
        max_retries=0,
        _strict_response_validation=True,
        http_client=openai.DefaultHttpxClient(verify=False),
        **kwargs,
    )


@pytest.fixture
def client(fake):
    with make_client(fake) as c:
        yield c


# ---------------------------------------------------------------------------------------------
# Wire shapes
# ---------------------------------------------------------------------------------------------


def test_base_url_is_loopback_v1(fake):
    assert fake.base_url == f"http://127.0.0.1:{fake.port}/v1"
    assert fake.port > 0
    assert fake.env()["OPENAI_BASE_URL"] == fake.base_url


def test_responses_text_reply_and_usage(fake, client):
    fake.script(
        Reply.text("Paris", input_tokens=21, output_tokens=4, cached_tokens=7, reasoning_tokens=2)
    )
    resp = client.responses.create(model="gpt-test", input="Capital of France?", store=False)

    assert isinstance(resp, Response)
    assert resp.output_text == "Paris"
    assert resp.status == "completed"
    assert resp.model == "gpt-test"
    assert resp.usage is not None
    assert resp.usage.input_tokens == 21
    assert resp.usage.output_tokens == 4
    assert resp.usage.total_tokens == 25
    assert resp.usage.input_tokens_details.cached_tokens == 7
    assert resp.usage.output_tokens_details.reasoning_tokens == 2


def test_responses_raw_json_passes_strict_sdk_model(fake, client):
    fake.script(Reply.tool_calls(ToolCall("lookup", {"q": "x"}), text="thinking"))
    raw = client.responses.with_raw_response.create(
        model="gpt-test",
        input=[{"role": "user", "content": "hi"}],
        instructions="be brief",
        tools=[FUNCTION_TOOL],
        tool_choice="auto",
        text={"format": {"type": "json_schema", "name": "out", "schema": SCHEMA, "strict": True}},
        store=False,
    )
    body = raw.http_response.json()
    # Strict pydantic validation: no coercion, every required field present with the right type.
    model = Response.model_validate(body, strict=True)
    assert model.object == "response"
    assert [item.type for item in model.output] == ["message", "function_call"]
    assert model.tools[0].type == "function"
    assert model.text is not None and model.text.format is not None
    assert model.text.format.type == "json_schema"
    # Removing a required field must fail, proving the check has teeth.
    broken = {k: v for k, v in body.items() if k != "output"}
    with pytest.raises(pydantic.ValidationError):
        Response.model_validate(broken, strict=True)


def test_chat_text_reply_and_usage(fake, client):
    fake.script(Reply.text("Berlin", input_tokens=30, output_tokens=6, cached_tokens=12))
    comp = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "Capital of Germany?"}]
    )
    assert comp.choices[0].message.content == "Berlin"
    assert comp.choices[0].finish_reason == "stop"
    assert comp.choices[0].message.tool_calls is None
    assert comp.model == "gpt-test"
    assert comp.usage is not None
    assert (comp.usage.prompt_tokens, comp.usage.completion_tokens) == (30, 6)
    assert comp.usage.total_tokens == 36
    assert comp.usage.prompt_tokens_details is not None
    assert comp.usage.prompt_tokens_details.cached_tokens == 12


def test_chat_raw_json_passes_strict_sdk_model(fake, client):
    fake.script(Reply.tool_call("lookup", {"q": "x"}))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], tools=[CHAT_TOOL]
    )
    body = raw.http_response.json()
    model = ChatCompletion.model_validate(body, strict=True)
    assert model.object == "chat.completion"
    assert model.choices[0].finish_reason == "tool_calls"
    broken = {k: v for k, v in body.items() if k != "choices"}
    with pytest.raises(pydantic.ValidationError):
        ChatCompletion.model_validate(broken, strict=True)


def test_usage_can_be_omitted(fake, client):
    fake.script(Reply.text("a", include_usage=False), Reply.text("b", include_usage=False))
    assert client.responses.create(model="m", input="x").usage is None
    comp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert comp.usage is None


# ---------------------------------------------------------------------------------------------
# Function calls and structured output
# ---------------------------------------------------------------------------------------------


def test_responses_several_function_calls_in_one_reply(fake, client):
    fake.script(
        Reply.tool_calls(
            ToolCall("lookup", {"q": "a"}, call_id="call_A"),
            ToolCall("lookup", '{"q": "b"}'),
        )
    )
    resp = client.responses.create(model="m", input="go", tools=[FUNCTION_TOOL])
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == 2
    assert calls[0].call_id == "call_A"
    assert calls[0].name == "lookup"
    assert json.loads(calls[0].arguments) == {"q": "a"}
    assert calls[1].arguments == '{"q": "b"}'
    assert calls[1].call_id and calls[1].call_id != "call_A"
    assert resp.output_text == ""  # no message item at all


def test_chat_several_tool_calls_in_one_reply(fake, client):
    fake.script(
        Reply.tool_calls(
            ToolCall("lookup", {"q": "a"}, call_id="call_A"), ToolCall("other", {"n": 1})
        )
    )
    comp = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "go"}], tools=[CHAT_TOOL]
    )
    msg = comp.choices[0].message
    assert comp.choices[0].finish_reason == "tool_calls"
    assert msg.content is None
    assert msg.tool_calls is not None
    assert (msg.tool_calls[0].id, msg.tool_calls[0].function.name) == ("call_A", "lookup")
    assert msg.tool_calls[1].function.name == "other"
    assert json.loads(msg.tool_calls[1].function.arguments) == {"n": 1}


def test_json_reply_and_recorded_structured_output_requests(fake, client):
    fake.script(Reply.json({"answer": "42"}), Reply.json({"answer": "43"}))
    resp = client.responses.create(
        model="gpt-a",
        input="q",
        tools=[FUNCTION_TOOL],
        text={"format": {"type": "json_schema", "name": "out", "schema": SCHEMA, "strict": True}},
        store=False,
    )
    assert json.loads(resp.output_text) == {"answer": "42"}
    comp = client.chat.completions.create(
        model="gpt-b",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "q2"}],
        tools=[CHAT_TOOL],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": SCHEMA, "strict": True},
        },
    )
    assert json.loads(comp.choices[0].message.content or "") == {"answer": "43"}

    (r,) = fake.requests_to("/v1/responses")
    assert r.method == "POST"
    assert r.model == "gpt-a"
    assert r.json["input"] == "q"
    assert r.json["store"] is False
    assert r.json["tools"] == [FUNCTION_TOOL]
    assert r.json["text"]["format"]["schema"] == SCHEMA
    assert r.headers["authorization"] == "Bearer test"
    assert r.reply == Reply.json({"answer": "42"})

    (c,) = fake.requests_to("chat")
    assert c.model == "gpt-b"
    assert c.json["tools"] == [CHAT_TOOL]
    assert c.json["response_format"]["json_schema"]["schema"] == SCHEMA
    assert c.text == "sys\nq2"
    assert [x.path for x in fake.requests] == ["/v1/responses", "/v1/chat/completions"]


def test_sdk_parse_helper_reads_json_reply(fake, client):
    class Out(pydantic.BaseModel):
        answer: str

    fake.script(Reply.json({"answer": "yes"}))
    parsed = client.responses.parse(model="m", input="q", text_format=Out)
    assert parsed.output_parsed == Out(answer="yes")
    assert fake.last_request.json["text"]["format"]["type"] == "json_schema"


# ---------------------------------------------------------------------------------------------
# Scripting order, default, responders
# ---------------------------------------------------------------------------------------------


def test_queue_order_endpoint_queues_and_default(fake, client):
    fake.script("g1", "g2")
    fake.script_chat("c1")
    assert fake.pending == 3

    def chat(text: str) -> str | None:
        comp = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}]
        )
        return comp.choices[0].message.content

    def responses(text: str) -> str:
        return client.responses.create(model="m", input=text).output_text

    assert chat("x") == "c1"  # endpoint queue first
    assert responses("x") == "g1"  # then the shared global queue, in order
    assert chat("x") == "g2"
    assert fake.pending == 0
    assert responses("x") == "ok"  # default when everything is consumed
    assert chat("x") == "ok"


def test_responder_callable_and_callable_script_item(fake, client):
    fake.responder = lambda body: Reply.text(request_text(body).upper())
    fake.script(lambda body: f"one-shot for {body['model']}")
    assert client.responses.create(model="m1", input="x").output_text == "one-shot for m1"
    resp = client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "echo me"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "tool says hi"},
        ],
        instructions="sys",
    )
    assert resp.output_text == "SYS\nECHO ME\nTOOL SAYS HI"
    comp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "yo"}])
    assert comp.choices[0].message.content == "YO"

    # A responder returning None falls through to the default reply.
    fake.responder = lambda body: None
    assert client.responses.create(model="m", input="x").output_text == "ok"


def test_broken_responder_gives_500_and_is_recorded(fake, client):
    fake.responder = lambda body: 1 / 0
    with pytest.raises(openai.InternalServerError, match="ZeroDivisionError"):
        client.responses.create(model="m", input="x")
    assert len(fake.errors) == 1 and isinstance(fake.errors[0], ZeroDivisionError)


def test_serve_helper_and_custom_default():
    with serve("first", default="fallback") as fake, make_client(fake) as client:
        assert client.responses.create(model="m", input="x").output_text == "first"
        assert client.responses.create(model="m", input="x").output_text == "fallback"
    assert not fake.running


def test_delay(fake, client):
    fake.script(Reply.text("slow", delay=0.3))
    start = time.monotonic()
    assert client.responses.create(model="m", input="x").output_text == "slow"
    assert time.monotonic() - start >= 0.3


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def test_rate_limit_with_retry_after(fake, client):
    fake.script(Reply.rate_limit(retry_after=2))
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="m", input="x")
    err = info.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "2"
    assert err.code == "rate_limit_exceeded"
    assert isinstance(err.body, dict) and "Rate limit" in err.body["message"]


@pytest.mark.parametrize(
    ("reply", "exc", "status"),
    [
        (Reply.unauthorized(), openai.AuthenticationError, 401),
        (Reply.server_error(), openai.InternalServerError, 500),
        (Reply.server_error(503), openai.InternalServerError, 503),
        (Reply.bad_request("bad schema", param="text"), openai.BadRequestError, 400),
        (Reply.not_found(), openai.NotFoundError, 404),
    ],
)
@pytest.mark.parametrize("endpoint", ["responses", "chat"])
def test_error_statuses(fake, client, reply, exc, status, endpoint):
    fake.script(reply)
    with pytest.raises(exc) as info:
        if endpoint == "responses":
            client.responses.create(model="m", input="x")
        else:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"] == reply.error_message
    assert info.value.body["type"] == reply.error_type


def test_chat_only_server_404s_responses_without_consuming_script():
    with FakeOpenAI(responses_api=False) as fake, make_client(fake) as client:
        fake.script("from chat")
        with pytest.raises(openai.NotFoundError) as info:
            client.responses.create(model="m", input="x")
        assert "Invalid URL" in str(info.value)
        assert fake.pending == 1
        comp = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        assert comp.choices[0].message.content == "from chat"
        assert [r.path for r in fake.requests] == ["/v1/responses", "/v1/chat/completions"]


def test_missing_route_can_be_405():
    with FakeOpenAI(responses_api=False, missing_status=405) as fake, make_client(fake) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(model="m", input="x")
        assert info.value.status_code == 405


def test_api_key_enforced(fake):
    fake.api_key = "right"
    with make_client(fake) as wrong, pytest.raises(openai.AuthenticationError):
        wrong.responses.create(model="m", input="x")
    with make_client(fake, api_key="right") as good:
        assert good.responses.create(model="m", input="x").output_text == "ok"


def test_malformed_json_raises_json_decode_error(fake, client):
    # The SDK does not wrap this: response.json() raises json.JSONDecodeError (a ValueError).
    fake.script(Reply.malformed(), Reply.malformed())
    with pytest.raises(json.JSONDecodeError):
        client.responses.create(model="m", input="x")
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def test_wrong_shape_raises_validation_error_in_strict_client(fake, client):
    fake.script(Reply.raw(200, json.dumps({"object": "response"})))
    with pytest.raises(openai.APIResponseValidationError):
        client.responses.create(model="m", input="x")


def test_disconnect_raises_connection_error(fake, client):
    fake.script(Reply.disconnect())
    with pytest.raises(openai.APIConnectionError) as info:
        client.responses.create(model="m", input="x")
    assert not isinstance(info.value, openai.APITimeoutError)


def test_hung_socket_times_out_and_stop_is_prompt():
    fake = FakeOpenAI().start()
    try:
        fake.script(Reply.hang())
        with make_client(fake, timeout=0.5) as client:
            start = time.monotonic()
            with pytest.raises(openai.APITimeoutError):
                client.responses.create(model="m", input="x")
            assert 0.4 <= time.monotonic() - start < 2
        assert len(fake.requests) == 1  # recorded even though never answered
    finally:
        start = time.monotonic()
        fake.stop()
        assert time.monotonic() - start < 1.5
    assert not fake.running


def test_stop_releases_a_client_still_waiting_on_a_hung_request():
    fake = FakeOpenAI().start()
    fake.script(Reply.hang())
    errors: list[BaseException] = []

    def call() -> None:
        with make_client(fake, timeout=30) as client:
            try:
                client.responses.create(model="m", input="x")
            except openai.APIError as e:
                errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    fake.wait_for_requests(1, timeout=5)
    assert fake.in_flight == 1
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 1.5
    t.join(timeout=5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)


def _post_twice(fake: FakeOpenAI) -> tuple[list[str | None], http.client.HTTPConnection]:
    """Two requests on one connection (the second only if the first left it open)."""
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    seen: list[str | None] = []
    for _ in range(2):
        conn.request("POST", "/v1/responses", json.dumps({"model": "m", "input": "x"}), headers)
        reply = conn.getresponse()
        reply.read()
        assert reply.status == 200
        seen.append(reply.getheader("Connection"))
        if reply.getheader("Connection") == "close":
            break
    return seen, conn


def test_every_answer_closes_its_connection_by_default(fake):
    seen, conn = _post_twice(fake)
    conn.close()
    assert seen == ["close"]


def test_keep_alive_serves_several_requests_on_one_connection_and_stop_closes_it():
    fake = FakeOpenAI(keep_alive=True).start()
    try:
        seen, conn = _post_twice(fake)
        assert seen == [None, None] and len(fake.requests) == 2
    finally:
        fake.stop()
    assert conn.sock is not None
    assert conn.sock.recv(1) == b""  # the idle connection was closed by stop()
    conn.close()


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


def test_concurrent_async_requests_each_consume_one_reply(fake):
    n = 6
    fake.script(*[Reply.text(f"r{i}", delay=0.2) for i in range(n)])

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=fake.base_url,
            api_key="test",
            max_retries=0,
            timeout=5,
            http_client=openai.DefaultAsyncHttpxClient(verify=False),
        ) as client:
            results = await asyncio.gather(
                *[client.responses.create(model="m", input=str(i)) for i in range(n)]
            )
        return [r.output_text for r in results]

    start = time.monotonic()
    texts = asyncio.run(main())
    elapsed = time.monotonic() - start
    assert sorted(texts) == sorted(f"r{i}" for i in range(n))  # each reply exactly once
    assert fake.max_in_flight == n
    assert elapsed < 0.2 * n * 0.75  # served in parallel, not one after another
    assert len(fake.requests_to("responses")) == n


def test_reset_clears_everything(fake, client):
    fake.script("a", "b")
    client.responses.create(model="m", input="x")
    fake.reset()
    assert fake.pending == 0
    assert fake.requests == []
    assert client.responses.create(model="m", input="x").output_text == "ok"
