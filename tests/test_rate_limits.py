"""Rate limits: one limiter per (server, model), through the CLI and the API, against the fake
OpenAI server's request and token buckets (tests/support/rate_buckets.py)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import textwrap
from pathlib import Path

import pytest
import stepchain
from rich.console import Console
from stepchain.ui.live_table import LiveTable

from tests.support.fake_openai import FakeOpenAI, Reply, request_text

FAST = "defaults:\n  backoff: {initial: 0.01, max: 0.05}\n  retries: 0\n"


@pytest.fixture
def serve(monkeypatch):
    servers: list[FakeOpenAI] = []

    def start(**kwargs) -> FakeOpenAI:
        server = FakeOpenAI(**kwargs).start()
        servers.append(server)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        return server

    yield start
    for server in servers:
        server.stop()


def pipeline(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"version: 1\nname: limits\n{FAST}" + textwrap.dedent(body))
    return path


def fan_out(items: int, model: str = "gpt-test", extra: str = "") -> str:
    return textwrap.dedent(f"""
        steps:
          - id: each
            foreach: "range({items}) | list"
            prompt: "item {{{{ item }}}}{extra}"
            model: {model}
        """)


def echo(body: dict) -> Reply:
    """The item's own answer, reporting the input tokens the server counted."""
    text = request_text(body)
    return Reply.text(f"done {text[:7].strip()}", input_tokens=math.ceil(len(text) / 4))


def run_json(cli, path: Path, *args: str) -> dict:
    result = cli("run", path, "--json", *args)
    assert result.stdout, result.output
    return json.loads(result.stdout)


# -- fan-outs under a limit -----------------------------------------------------------------
def test_a_fan_out_under_an_rpm_limit_completes_every_item_without_spending_retries(
    serve, cli, tmp_path
):
    fake = serve(rpm=1200, responder=echo)  # 20 a second
    path = pipeline(tmp_path, fan_out(30))
    doc = run_json(cli, path, "--max-concurrent", "32")
    step = doc["steps"]["each"]
    assert (doc["status"], step["status"], step["attempts"]) == ("completed", "completed", 1)
    assert step["output"] == [f"done item {i}" for i in range(30)]
    answered = [r for r in fake.requests if r.reply is not None and r.reply.status == 200]
    assert sorted(r.json["input"][0]["content"] for r in answered) == sorted(
        f"item {i}" for i in range(30)
    )


def test_a_tpm_limit_with_long_prompts_completes_every_item(serve, cli, tmp_path):
    serve(tpm=60_000, responder=echo)  # 1,000 tokens a second; each request ~270
    long = " " + "lorem ipsum " * 85  # ~1,000 characters
    path = pipeline(tmp_path, fan_out(12, extra=long) + "    max_output_tokens: 16\n")
    doc = run_json(cli, path, "--max-concurrent", "12")
    step = doc["steps"]["each"]
    assert (doc["status"], step["attempts"]) == ("completed", 1)
    assert [out[:6] for out in step["output"]] == ["done i"] * 12


def test_declared_limits_hold_before_the_first_429(serve, cli, tmp_path):
    fake = serve(rpm=600, responder=echo)  # the server allows 10 a second
    body = "limits:\n  gpt-test: {rpm: 480}\n" + fan_out(25)
    doc = run_json(cli, pipeline(tmp_path, body), "--max-concurrent", "25")
    assert doc["status"] == "completed"
    assert fake.limits is not None and fake.limits.rejected == 0  # never went over
    assert len(fake.requests) == 25


def test_limits_declared_in_the_environment_hold_too(serve, cli, tmp_path, monkeypatch):
    fake = serve(rpm=600, responder=echo)
    monkeypatch.setenv("STEPCHAIN_LIMITS", json.dumps({"gpt-test": {"rpm": 480}}))
    doc = run_json(cli, pipeline(tmp_path, fan_out(25)), "--max-concurrent", "25")
    assert doc["status"] == "completed"
    assert fake.limits is not None and fake.limits.rejected == 0


def test_limits_declared_in_the_user_settings_hold_too(serve, cli, tmp_path, isolated_home):
    fake = serve(rpm=600, responder=echo)
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "settings.yaml").write_text("limits:\n  gpt-test: {rpm: 480}\n")
    doc = run_json(cli, pipeline(tmp_path, fan_out(25)), "--max-concurrent", "25")
    assert doc["status"] == "completed"
    assert fake.limits is not None and fake.limits.rejected == 0


def test_a_malformed_stepchain_limits_fails_before_any_step(serve, cli, tmp_path, monkeypatch):
    fake = serve()
    monkeypatch.setenv("STEPCHAIN_LIMITS", '{"gpt-test": {"rpm": -1}}')
    result = cli("run", pipeline(tmp_path, fan_out(2)))
    assert result.exit_code != 0
    assert "STEPCHAIN_LIMITS is not valid: gpt-test.rpm must be a positive number" in result.output
    assert "hint:" in result.output
    assert fake.requests == []


def test_an_invalid_limits_section_is_reported_with_its_position(cli, tmp_path):
    body = "limits:\n  gpt-test: {rpm: 0}\n" + fan_out(2)
    result = cli("validate", pipeline(tmp_path, body))
    assert result.exit_code != 0
    assert 'pipeline.yaml:7:19: limits["gpt-test"].rpm: rpm must be greater than 0' in result.output


# -- 429s -----------------------------------------------------------------------------------
def test_a_429_with_retry_after_pauses_every_request_to_the_model(serve, tmp_path):
    fake = serve()
    fake.script(Reply.rate_limit(retry_after=None, retry_after_ms=500))
    fake.default = Reply.text("fine").with_delay(0.2)
    path = pipeline(tmp_path, fan_out(8))
    result = stepchain.Executor(4).run(path)
    step = result.steps["each"]
    assert (result.status, step.attempts, step.output) == ("completed", 1, ["fine"] * 8)
    first = next(r for r in fake.requests if r.reply is not None and r.reply.status == 429)
    later = fake.requests[4:]  # everything sent after the first four went out together
    assert len(later) == 5  # four more items, and the one that got the 429, once more
    assert all(r.received_at - first.received_at >= 0.5 for r in later)


def test_a_herd_of_429s_to_requests_already_in_flight_pauses_the_model_once(serve, tmp_path):
    fake = serve(responder=echo)
    # all eight go out before the first 429 comes back; each says "retry in 0.2 s"
    fake.script(*[Reply.rate_limit(retry_after=None, retry_after_ms=200, delay=0.3)] * 8)
    body = fan_out(8).replace("model: gpt-test", "model: gpt-test\n    timeout: 3")
    result = stepchain.Executor(8).run(pipeline(tmp_path, body))
    step = result.steps["each"]
    # one pause of 0.2 s, not one that grows with each 429 of the herd (past the 3 s timeout)
    assert (result.status, step.attempts, step.error) == ("completed", 1, None)
    assert [r.reply.status for r in fake.requests if r.reply] == [429] * 8 + [200] * 8


def test_a_rate_limit_wait_past_the_timeout_fails_saying_so(serve, cli, tmp_path):
    fake = serve()
    fake.default = Reply.rate_limit(retry_after=30)
    path = pipeline(
        tmp_path, "steps:\n  - id: ask\n    prompt: hi\n    model: gpt-test\n    timeout: 5\n"
    )
    doc = run_json(cli, path)
    step = doc["steps"]["ask"]
    assert (doc["status"], step["status"], step["attempts"]) == ("failed", "failed", 1)
    assert step["error_kind"] == "rate_limit"
    assert step["error"].startswith(
        "rate limited: the rate limit of gpt-test asks for a 30.0s wait, past the step's "
        "timeout (5s)"
    )
    assert "limits:" in step["error"]  # the hint says what to do
    assert len(fake.requests) == 1  # waited for nothing: failed at once


def test_two_models_have_separate_limiters(serve, tmp_path):
    fake = serve(responder=echo)
    body = """
        limits:
          slow-model: {rpm: 6}
        steps:
          - id: slow
            foreach: "range(2) | list"
            prompt: "slow {{ item }}"
            model: slow-model
            timeout: 3
          - id: fast
            foreach: "range(4) | list"
            prompt: "fast {{ item }}"
            model: fast-model
            timeout: 3
        """
    result = stepchain.Executor(8).run(pipeline(tmp_path, body))
    slow, fast = result.steps["slow"], result.steps["fast"]
    assert (fast.status, fast.output) == ("completed", [f"done fast {i}" for i in range(4)])
    # 6 a minute: the second request to slow-model would wait 10 s, past its 3 s timeout
    assert (slow.status, slow.error_kind) == ("failed", "rate_limit")
    assert slow.error is not None and slow.error.startswith("item ")
    assert ": rate limited: the rate limit of slow-model asks for a " in slow.error
    assert sorted(r.model for r in fake.requests) == ["fast-model"] * 4 + ["slow-model"]


# -- what the user sees while waiting -------------------------------------------------------
def test_steps_waiting_for_a_rate_limit_are_reported_as_waiting(serve, tmp_path):
    serve(responder=echo)
    body = "limits:\n  gpt-test: {rpm: 120}\n" + fan_out(4)  # 2 a second: two items wait
    events: list[tuple[str, str]] = []
    table = LiveTable(
        stepchain.load_pipeline(pipeline(tmp_path, body)), Console(file=io.StringIO())
    )

    def observe(event: str, step_id: str, result) -> None:
        events.append((event, step_id))
        table(event, step_id, result)
        if event == "waiting":
            assert table.rows[step_id]["status"] == "waiting"

    observe.watch_limits = table.watch_limits  # type: ignore[attr-defined]
    with table:
        result = stepchain.Executor(4).run(tmp_path / "pipeline.yaml", observer=observe)
    assert result.status == "completed"
    assert ("waiting", "each") in events
    assert events.count(("waiting", "each")) == events.count(("resumed", "each"))
    assert table.rows["each"]["status"] == "completed"
    # the run-level line: requests and tokens in the last minute against the limit
    assert table.rates is not None
    (line,) = table.rates()
    assert line.startswith("gpt-test: 4/120 requests/min, ") and "tokens/min" in line
    console = Console(file=io.StringIO(), width=120)
    console.print(table.table())
    assert "gpt-test: 4/120 requests/min" in console.file.getvalue()


# -- the decomposer -------------------------------------------------------------------------
PLAN = {"version": 1, "name": "drafted", "steps": [{"id": "a", "prompt": "Do the work."}]}


def pipelines_or_text(body: dict) -> Reply:
    """A pipeline for the decomposer (JSON mode), a short text for steps."""
    wants_json = "json_object" in json.dumps(body.get("text") or body.get("response_format"))
    return Reply.json(PLAN) if wants_json else Reply.text("fine")


def test_the_decomposer_waits_for_the_same_limiter_as_a_run_in_the_same_process(serve, tmp_path):
    fake = serve(responder=pipelines_or_text)
    fake.script(Reply.rate_limit(retry_after=None, retry_after_ms=1500))
    pipe = stepchain.load_pipeline(pipeline(tmp_path, fan_out(1)))

    async def both() -> tuple[list, stepchain.Pipeline]:
        run = asyncio.create_task(stepchain.aexecute(pipe, run_id="r"))
        for _ in range(500):  # until the run's first request got its 429 (bounded)
            if any(r.reply is not None and r.reply.status == 429 for r in fake.requests):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the run's client has read the 429 and paused the model
        drafted = await stepchain.adecompose("Do the work.", model="gpt-test")
        return await run, drafted

    results, drafted = asyncio.run(both())
    assert [r.status for r in results] == ["completed"]
    assert [s.id for s in drafted.steps] == ["a"]
    limited = next(r for r in fake.requests if r.reply is not None and r.reply.status == 429)
    asked = next(r for r in fake.requests if "json_object" in r.body.decode())
    # the decomposer's request waited out the pause the run's 429 set for gpt-test
    assert asked.received_at - limited.received_at >= 1.0
    assert len(fake.requests) == 3  # the 429, the step sent again, the decomposer


def test_decompose_sends_a_provider_model_to_the_provider_of_the_user_settings(
    serve, cli, tmp_path, isolated_home, monkeypatch
):
    hosted = serve(responder=pipelines_or_text)
    local = serve(responses_api=False, responder=pipelines_or_text)
    monkeypatch.setenv("OPENAI_BASE_URL", hosted.base_url)
    monkeypatch.setenv("LOCAL_KEY", "local-key")
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "settings.yaml").write_text(
        f'providers:\n  local: {{base_url: "{local.base_url}", api_key_env: LOCAL_KEY, '
        "api: chat, limits: {llama3: {rpm: 600}}}\n"
    )
    out = tmp_path / "drafted.yaml"
    result = cli("decompose", "Do the work.", "--model", "local/llama3", "-o", out)
    assert result.exit_code == 0, result.output
    assert "# model: local/llama3" in out.read_text()
    (asked,) = local.chat_requests
    assert asked.json["model"] == "llama3"
    assert asked.headers["authorization"] == "Bearer local-key"
    assert hosted.requests == []
    monkeypatch.delenv("LOCAL_KEY")
    again = cli("decompose", "Another task.", "--model", "local/llama3")
    assert again.exit_code == 2
    assert "needs credentials: set LOCAL_KEY" in again.output
    assert len(local.requests) == 1
