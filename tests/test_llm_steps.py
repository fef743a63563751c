"""LLM (`prompt`) steps: real pipelines run through the public API against a fake OpenAI server."""

from __future__ import annotations

import json
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import stepchain
from stepchain.errors import CredentialsMissing

from tests.support.fake_openai import FakeOpenAI, Reply, ToolCall

FAST = "defaults:\n  backoff: {initial: 0.01, max: 0.05}\n"


@contextmanager
def llm_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kwargs):
    with FakeOpenAI(**kwargs) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("STEPCHAIN_HOME", str(tmp_path / "home"))
        yield server


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with llm_server(tmp_path, monkeypatch) as server:
        yield server


def pipeline(tmp_path: Path, body: str, *, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"version: 1\nname: llm-test\n{FAST}" + textwrap.dedent(body))
    return path


def run(path: Path, max_concurrent: int = 8, **options) -> stepchain.RunResult:
    return stepchain.Executor(max_concurrent).run(path, **options)


def bodies(fake: FakeOpenAI, endpoint: str = "responses") -> list[dict]:
    return [r.json for r in fake.requests_to(endpoint)]


# -- request shape --------------------------------------------------------------------------
def test_prompt_step_sends_a_stateless_responses_request(fake, tmp_path):
    fake.script(Reply.text("Apples are red."))
    path = pipeline(
        tmp_path,
        """
        inputs:
          fruit: {type: string, default: apples}
        steps:
          - id: describe
            prompt: "Describe {{ inputs.fruit }} in one sentence."
            system: You are terse.
            model: gpt-test
            temperature: 0.3
            max_output_tokens: 50
        """,
    )
    result = run(path)
    assert result.status == "completed"
    assert result.steps["describe"].output == "Apples are red."
    [body] = bodies(fake)
    assert body["model"] == "gpt-test"
    assert body["input"] == [{"role": "user", "content": "Describe apples in one sentence."}]
    assert body["instructions"] == "You are terse."
    assert body["store"] is False
    assert "previous_response_id" not in body
    assert body["temperature"] == 0.3
    assert body["max_output_tokens"] == 50
    assert "text" not in body and "tools" not in body


def test_structured_output_is_sent_as_strict_json_schema_and_parsed(fake, tmp_path):
    fake.script(Reply.json({"city": "Paris", "population": 2100000}))
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: capital
            prompt: The capital of France, as JSON.
            output_schema:
              type: object
              properties: {city: {type: string}, population: {type: integer}}
              required: [city, population]
              additionalProperties: false
          - id: line
            template: "{{ steps.capital.output.city }} has {{ steps.capital.output.population }} people"
        """,
    )
    result = run(path)
    assert result.steps["capital"].output == {"city": "Paris", "population": 2100000}
    assert result.steps["line"].output == "Paris has 2100000 people"
    fmt = bodies(fake)[0]["text"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["strict"] is True
    assert fmt["schema"]["properties"]["population"] == {"type": "integer"}


def test_schema_that_strict_mode_cannot_take_is_sent_non_strict_and_arrays_are_wrapped(
    fake, tmp_path
):
    fake.script(Reply.json({"name": "x"}), Reply.json({"value": ["a", "b"]}))
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: open
            prompt: Any object with a name.
            output_schema: {type: object, properties: {name: {type: string}}, required: [name]}
          - id: listing
            prompt: Two letters.
            output_schema: {type: array, items: {type: string}}
        """,
    )
    result = run(path, max_concurrent=1)
    assert result.steps["open"].output == {"name": "x"}
    assert result.steps["listing"].output == ["a", "b"]
    first, second = (b["text"]["format"] for b in bodies(fake))
    assert first["strict"] is False
    assert second["schema"]["properties"]["value"] == {"type": "array", "items": {"type": "string"}}
    assert second["schema"]["type"] == "object" and second["strict"] is True


def test_schema_mismatch_is_retried_with_the_validation_error_fed_back(fake, tmp_path):
    fake.script(Reply.json({"answer": 42}), Reply.json({"answer": "forty-two"}))
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: ask
            prompt: What is six times seven?
            output_schema:
              type: object
              properties: {answer: {type: string}}
              required: [answer]
              additionalProperties: false
        """,
    )
    result = run(path)
    step = result.steps["ask"]
    assert (step.status, step.attempts, step.output) == ("completed", 2, {"answer": "forty-two"})
    retry = bodies(fake)[1]["input"]
    assert retry[0] == {"role": "user", "content": "What is six times seven?"}
    assert "did not match the schema" in retry[1]["content"]
    assert "42 is not of type 'string'" in retry[1]["content"]
    assert step.usage["input_tokens"] == 2 * 10  # the rejected answer's tokens count too
    assert result.usage["input_tokens"] == 2 * 10


def test_answer_that_never_matches_fails_with_the_schema_error(fake, tmp_path):
    fake.default = Reply.text("not json at all")
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: ask
            prompt: JSON please
            retries: 1
            output_schema: {type: object}
        """,
    )
    step = run(path).steps["ask"]
    assert (step.status, step.attempts) == ("failed", 2)
    assert "not valid JSON" in step.error and "after 2 attempts" in step.error
    assert step.usage["output_tokens"] == 2 * 5  # what the failed attempts cost is recorded


# -- API selection --------------------------------------------------------------------------
def test_auto_falls_back_to_chat_on_404_and_remembers(tmp_path, monkeypatch):
    with llm_server(tmp_path, monkeypatch, responses_api=False) as fake:
        fake.script(Reply.text("one"), Reply.text("two"))
        path = pipeline(
            tmp_path,
            """
            steps:
              - id: first
                prompt: Say one.
              - id: second
                prompt: "After {{ steps.first.output }}, say two."
            """,
        )
        result = run(path)
        assert result.status == "completed"
        assert [result.steps[s].output for s in ("first", "second")] == ["one", "two"]
        assert len(fake.requests_to("responses")) == 1
        assert len(fake.requests_to("chat")) == 2


def test_api_chat_sends_chat_completions(fake, tmp_path):
    fake.script(Reply.json({"ok": True}, input_tokens=7, output_tokens=3, cached_tokens=2))
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: ask
            prompt: Are you there?
            system: Answer in JSON.
            api: chat
            max_output_tokens: 20
            output_schema:
              type: object
              properties: {ok: {type: boolean}}
              required: [ok]
              additionalProperties: false
        """,
    )
    result = run(path)
    assert result.steps["ask"].output == {"ok": True}
    assert result.steps["ask"].usage == {
        "input_tokens": 7,
        "output_tokens": 3,
        "cached_tokens": 2,
        "total_tokens": 10,
    }
    assert fake.requests_to("responses") == []
    [body] = bodies(fake, "chat")
    assert body["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Are you there?"},
    ]
    assert body["max_tokens"] == 20
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True


# -- errors and retries ---------------------------------------------------------------------
def test_rate_limit_waits_for_retry_after_without_spending_a_retry(fake, tmp_path):
    fake.script(Reply.rate_limit(retry_after=0.3), Reply.text("finally"))
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n    retries: 0\n")
    step = run(path).steps["ask"]
    assert (step.status, step.attempts, step.output) == ("completed", 1, "finally")
    first, second = fake.requests
    assert second.received_at - first.received_at >= 0.3


def test_server_error_is_retried(fake, tmp_path):
    fake.script(Reply.server_error(500), Reply.server_error(503), Reply.text("up again"))
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n")
    step = run(path).steps["ask"]
    assert (step.status, step.attempts, step.output) == ("completed", 3, "up again")


def test_hung_server_times_out_and_fails_after_retries(fake, tmp_path):
    fake.default = Reply.hang()
    path = pipeline(
        tmp_path, "steps:\n  - id: ask\n    prompt: hi\n    timeout: 1\n    retries: 1\n"
    )
    result = run(path)
    step = result.steps["ask"]
    assert (result.status, step.status, step.attempts) == ("failed", "failed", 2)
    assert "timed out after 1s" in step.error and "after 2 attempts" in step.error
    assert len(fake.requests) == 2


def test_malformed_response_is_retried(fake, tmp_path):
    fake.script(Reply.malformed(), Reply.text("clean"))
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n")
    step = run(path).steps["ask"]
    assert (step.status, step.attempts, step.output) == ("completed", 2, "clean")


def test_bad_credentials_fail_at_once(fake, tmp_path):
    fake.default = Reply.unauthorized()
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n    retries: 3\n")
    step = run(path).steps["ask"]
    assert (step.status, step.attempts) == ("failed", 1)
    assert "OPENAI_API_KEY" in step.error
    assert len(fake.requests) == 1


def test_bad_request_fails_at_once_with_the_servers_message(fake, tmp_path):
    fake.default = Reply.bad_request("temperature is out of range", param="temperature")
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n")
    step = run(path).steps["ask"]
    assert (step.status, step.attempts) == ("failed", 1)
    assert "temperature is out of range" in step.error


def test_missing_credentials_fail_before_any_request(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n")
    with pytest.raises(CredentialsMissing) as info:
        run(path)
    assert "OPENAI_API_KEY" in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2
    assert fake.requests == []


# -- tools ----------------------------------------------------------------------------------
def test_function_tool_loop_sends_results_back(fake, tmp_path):
    (tmp_path / "calc_tools.py").write_text(
        "def add(a: int, b: int) -> int:\n    '''Add two integers.'''\n    return a + b\n"
    )
    fake.script(
        Reply.tool_call("add", {"a": 2, "b": 3}, call_id="call_1"), Reply.text("The sum is 5.")
    )
    path = pipeline(
        tmp_path,
        """
        tools:
          add: {type: function, function: "calc_tools:add"}
        steps:
          - id: sum
            prompt: What is 2 + 3? Use the tool.
            tools: [add]
        """,
    )
    result = run(path)
    step = result.steps["sum"]
    assert (step.status, step.output) == ("completed", "The sum is 5.")
    first, second = bodies(fake)
    [tool] = first["tools"]
    assert (tool["type"], tool["name"], tool["description"]) == (
        "function",
        "add",
        "Add two integers.",
    )
    assert tool["parameters"]["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    assert second["input"][1:] == [
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "add",
            "arguments": '{"a": 2, "b": 3}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "5"},
    ]
    assert second["store"] is False and "previous_response_id" not in second
    assert step.usage["total_tokens"] == 30  # two turns of 10 + 5


def test_tool_failures_and_unknown_tools_are_answered_with_error_text(fake, tmp_path):
    (tmp_path / "failing_tools.py").write_text(
        "def boom() -> str:\n    raise ValueError('no luck')\n"
    )
    fake.script(
        Reply.tool_calls(ToolCall("boom", {}, "c1"), ToolCall("delete_all", {}, "c2")),
        Reply.text("I could not do it."),
    )
    path = pipeline(
        tmp_path,
        """
        tools:
          boom: {type: function, function: "failing_tools:boom"}
        steps:
          - id: try
            prompt: Try the tool.
            tools: [boom]
        """,
    )
    assert run(path).steps["try"].output == "I could not do it."
    outputs = {
        i["call_id"]: i["output"]
        for i in bodies(fake)[1]["input"]
        if i.get("type") == "function_call_output"
    }
    assert "ValueError: no luck" in outputs["c1"]
    assert "no tool named 'delete_all'" in outputs["c2"] and "boom" in outputs["c2"]


def test_too_many_tool_calls_fail_the_step(fake, tmp_path):
    (tmp_path / "loop_tools.py").write_text("def ping() -> str:\n    return 'pong'\n")
    fake.default = Reply.tool_call("ping", {})
    path = pipeline(
        tmp_path,
        """
        tools:
          ping: {type: function, function: "loop_tools:ping"}
        steps:
          - id: chatty
            prompt: Ping forever.
            tools: [ping]
            max_tool_calls: 2
        """,
    )
    step = run(path).steps["chatty"]
    assert (step.status, step.attempts) == ("failed", 1)
    assert "max_tool_calls=2" in step.error
    assert len(fake.requests) == 3


def test_hosted_web_search_passes_through_on_responses(fake, tmp_path):
    fake.script(Reply.text("Found it."))
    path = pipeline(
        tmp_path,
        """
        tools:
          search: {type: web_search}
        steps:
          - id: look
            prompt: Search the news.
            tools: [search]
        """,
    )
    assert run(path).steps["look"].output == "Found it."
    assert bodies(fake)[0]["tools"] == [{"type": "web_search"}]


def test_hosted_tool_is_refused_on_chat(fake, tmp_path):
    path = pipeline(
        tmp_path,
        """
        tools:
          search: {type: web_search}
        steps:
          - id: look
            prompt: Search the news.
            tools: [search]
            api: chat
        """,
    )
    step = run(path).steps["look"]
    assert (step.status, step.attempts) == ("failed", 1)
    assert "web_search" in step.error and "Responses API" in step.error
    assert fake.requests == []


# -- usage and cache ------------------------------------------------------------------------
def test_usage_is_reported_per_step_and_per_run(fake, tmp_path):
    fake.script(
        Reply.text("a", input_tokens=100, output_tokens=20, cached_tokens=40),
        Reply.text("b", input_tokens=50, output_tokens=5),
    )
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: one
            prompt: first
          - id: two
            prompt: "second after {{ steps.one.output }}"
        """,
    )
    result = run(path)
    assert result.steps["one"].usage == {
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_tokens": 40,
        "total_tokens": 120,
    }
    assert result.steps["two"].usage == {
        "input_tokens": 50,
        "output_tokens": 5,
        "cached_tokens": 0,
        "total_tokens": 55,
    }
    assert result.usage == {
        "input_tokens": 150,
        "output_tokens": 25,
        "cached_tokens": 40,
        "total_tokens": 175,
    }
    assert json.loads(json.dumps(result.to_dict()))["usage"]["total_tokens"] == 175


def test_second_identical_run_sends_no_requests(fake, tmp_path):
    path = pipeline(
        tmp_path,
        """
        steps:
          - id: one
            prompt: first
          - id: two
            prompt: "second after {{ steps.one.output }}"
            output_schema: {type: object}
        """,
    )
    fake.script(Reply.text("a"), Reply.json({"b": 1}))
    first = run(path)
    assert first.status == "completed" and len(fake.requests) == 2
    second = run(path)
    assert len(fake.requests) == 2
    assert all(s.cached for s in second.results)
    assert second.steps["two"].output == {"b": 1}
    assert second.usage == {}  # replayed answers cost nothing


def test_mcp_tools_run_locally_and_only_allowed_ones_are_offered(fake, tmp_path):
    server = Path(__file__).parent / "support" / "mcp_servers.py"
    fake.script(
        Reply.tool_calls(ToolCall("flaky__pid", {}, "c1"), ToolCall("flaky__crash", {}, "c2")),
        Reply.text("done"),
    )
    path = pipeline(
        tmp_path,
        f"""
        tools:
          flaky:
            type: mcp
            command: [python, "{server}"]
            allowed_tools: [pid]
        steps:
          - id: ask
            prompt: Which process are you?
            tools: [flaky]
        """,
    )
    step = run(path, allow_run=True).steps["ask"]
    assert (step.status, step.output) == ("completed", "done")
    first, second = bodies(fake)
    assert [t["name"] for t in first["tools"]] == ["flaky__pid"]
    outputs = {
        i["call_id"]: i["output"]
        for i in second["input"]
        if i.get("type") == "function_call_output"
    }
    assert "pid" in outputs["c1"] and not outputs["c1"].startswith("error")
    assert "'crash' of MCP server 'flaky' is not allowed" in outputs["c2"]


def test_unknown_model_fails_at_once_with_the_servers_message(fake, tmp_path):
    fake.default = Reply.not_found("The model `gpt-nope` does not exist")
    path = pipeline(tmp_path, "steps:\n  - id: ask\n    prompt: hi\n    model: gpt-nope\n")
    step = run(path).steps["ask"]
    assert (step.status, step.attempts) == ("failed", 1)
    assert "The model `gpt-nope` does not exist" in step.error and "model name" in step.error
    assert [r.path for r in fake.requests] == ["/v1/responses", "/v1/chat/completions"]


def test_answer_cut_off_by_max_output_tokens_fails_clearly(fake, tmp_path):
    completion = {
        "id": "chatcmpl_1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {"role": "assistant", "content": "Once upon"},
            }
        ],
    }
    fake.script(Reply.raw(200, json.dumps(completion)))
    path = pipeline(
        tmp_path,
        "steps:\n  - id: story\n    prompt: A long story.\n    api: chat\n    max_output_tokens: 2\n",
    )
    step = run(path).steps["story"]
    assert (step.status, step.attempts) == ("failed", 1)
    assert "cut off at max_output_tokens (2)" in step.error
