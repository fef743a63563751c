"""Named providers: one pipeline talking to two test servers (one Responses, one chat-only)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import stepchain

from tests.support.fake_openai import FakeOpenAI, Reply


@pytest.fixture
def servers(monkeypatch):
    hosted = FakeOpenAI(default=Reply.text("from hosted")).start()
    local = FakeOpenAI(responses_api=False, default=Reply.text("from local")).start()
    monkeypatch.setenv("OPENAI_BASE_URL", hosted.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "hosted-key")
    monkeypatch.setenv("LOCAL_KEY", "local-key")
    yield hosted, local
    hosted.stop()
    local.stop()


def pipeline(tmp_path: Path, local: FakeOpenAI, steps: str) -> Path:
    path = tmp_path / "mixed.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: mixed
        providers:
          local: {{base_url: "{local.base_url}", api_key_env: LOCAL_KEY, api: chat,
                   headers: {{x-team: research}}}}
        steps:
        """)
        + textwrap.dedent(steps)
    )
    return path


MIXED = """\
  - id: cheap
    prompt: summarise
    model: local/llama3.2
  - id: hard
    prompt: "reason about {{ steps.cheap.output }}"
    model: gpt-test
"""


def test_one_pipeline_mixes_a_local_chat_only_server_and_a_hosted_one(servers, cli, tmp_path):
    hosted, local = servers
    path = pipeline(tmp_path, local, MIXED)
    doc = json.loads(cli("run", path, "--json").stdout)
    assert doc["status"] == "completed"
    assert doc["steps"]["cheap"]["output"] == "from local"
    assert doc["steps"]["hard"]["output"] == "from hosted"
    (chat,) = local.chat_requests
    assert chat.json["model"] == "llama3.2"  # the provider's own name for it
    assert chat.headers["authorization"] == "Bearer local-key"
    assert chat.headers["x-team"] == "research"
    assert local.responses_requests == []  # api: chat from the provider, no /responses probe
    (asked,) = hosted.responses_requests
    assert asked.json["model"] == "gpt-test"
    assert asked.headers["authorization"] == "Bearer hosted-key"
    assert "from local" in asked.text


def test_the_providers_base_url_is_part_of_the_cache_key(servers, cli, tmp_path):
    _, local = servers
    path = pipeline(tmp_path, local, MIXED)
    cli("run", path, "--json")
    again = json.loads(cli("run", path, "--json").stdout)
    assert all(step["cached"] for step in again["steps"].values())
    other = FakeOpenAI(responses_api=False, default=Reply.text("from elsewhere")).start()
    try:
        moved = pipeline(tmp_path, other, MIXED)  # same models, another server
        doc = json.loads(cli("run", moved, "--json").stdout)
        assert doc["steps"]["cheap"]["cached"] is False
        assert doc["steps"]["cheap"]["output"] == "from elsewhere"
    finally:
        other.stop()


def test_a_missing_provider_key_fails_before_anything_runs(servers, cli, tmp_path, monkeypatch):
    hosted, local = servers
    monkeypatch.delenv("LOCAL_KEY")
    result = cli("run", pipeline(tmp_path, local, MIXED))
    assert result.exit_code == 2
    assert "provider local (" in result.output and "set LOCAL_KEY" in result.output
    assert hosted.requests == [] and local.requests == []


def test_a_model_with_a_slash_that_names_no_provider_goes_to_the_default_server(
    servers, cli, tmp_path
):
    hosted, local = servers
    steps = "  - id: hf\n    prompt: hi\n    model: meta-llama/Llama-3-8B\n"
    doc = json.loads(cli("run", pipeline(tmp_path, local, steps), "--json").stdout)
    assert doc["steps"]["hf"]["output"] == "from hosted"
    assert hosted.responses_requests[0].json["model"] == "meta-llama/Llama-3-8B"


def test_a_provider_without_base_url_is_reported_with_its_position(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\nname: bad\nproviders:\n  local: {api: chat}\n"
        "steps:\n  - id: a\n    prompt: hi\n    model: local/x\n"
    )
    result = cli("validate", path)
    assert result.exit_code != 0
    assert "bad.yaml:4:" in result.output and "base_url" in result.output


def test_plan_names_the_provider_and_replays_after_a_run(servers, cli, tmp_path):
    _, local = servers
    path = pipeline(tmp_path, local, MIXED)
    cold = cli.json("plan", path)["steps"]
    assert cold["cheap"]["action"] == "run"
    # where it would go, then why it runs (issue 14's reason)
    assert (
        cold["cheap"]["detail"]
        == f"provider at {local.base_url}; no cached result for this request"
    )
    cli("run", path)
    warm = {sid: s["action"] for sid, s in cli.json("plan", path)["steps"].items()}
    assert warm == {"cheap": "replay", "hard": "replay"}
    assert local.requests and len(local.chat_requests) == 1  # planning asked nothing


def test_a_providers_limits_apply_to_its_models_only(servers, tmp_path):
    hosted, local = servers
    path = tmp_path / "limited.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: limited
        providers:
          local: {{base_url: "{local.base_url}", api_key_env: LOCAL_KEY, api: chat,
                   limits: {{llama3.2: {{rpm: 6}}}}}}
        steps:
          - id: cheap
            foreach: "range(2) | list"
            prompt: "local {{{{ item }}}}"
            model: local/llama3.2
            timeout: 3
          - id: hosted
            foreach: "range(2) | list"
            prompt: "hosted {{{{ item }}}}"
            model: llama3.2
            timeout: 3
        """)
    )
    result = stepchain.Executor(4).run(path)
    cheap, other = result.steps["cheap"], result.steps["hosted"]
    assert (other.status, other.output) == ("completed", ["from hosted"] * 2)
    assert (cheap.status, cheap.error_kind) == ("failed", "rate_limit")  # 6 a minute: 10 s apart
    assert cheap.error is not None and "the rate limit of llama3.2 asks for a " in cheap.error
    assert len(local.requests) == 1 and len(hosted.requests) == 2
