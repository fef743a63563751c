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
    # where it would go, and why it runs (issue 14's reason)
    assert (cold["cheap"]["provider"], cold["cheap"]["base_url"]) == ("local", local.base_url)
    assert cold["cheap"]["detail"] == "no cached result for this request"
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


# -- `provider:` on a step --------------------------------------------------------------------
def test_a_step_can_name_its_provider_in_a_provider_field(servers, cli, tmp_path):
    hosted, local = servers
    steps = """\
  - id: cheap
    prompt: summarise
    provider: local
    model: meta-llama/Llama-3-8B
"""
    doc = json.loads(cli("run", pipeline(tmp_path, local, steps), "--json").stdout)
    assert doc["steps"]["cheap"]["output"] == "from local"
    (chat,) = local.chat_requests
    assert chat.json["model"] == "meta-llama/Llama-3-8B"  # the model as the provider names it
    assert hosted.requests == []


def test_a_default_provider_goes_with_the_default_model_only(servers, cli, tmp_path):
    _, local = servers
    path = tmp_path / "defaults.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        version: 1
        name: defaults
        providers:
          local: {{base_url: "{local.base_url}", api_key_env: LOCAL_KEY, api: chat}}
        defaults: {{provider: local, model: llama3.2}}
        steps:
          - id: cheap
            prompt: summarise
          - id: hard
            prompt: reason
            model: gpt-test
        """)
    )
    doc = json.loads(cli("run", path, "--json").stdout)
    assert doc["steps"]["cheap"]["output"] == "from local"
    assert doc["steps"]["hard"]["output"] == "from hosted"  # its own model, the default server
    assert [r.json["model"] for r in local.chat_requests] == ["llama3.2"]


def test_an_unknown_provider_is_reported_with_its_position(servers, cli, tmp_path):
    _, local = servers
    steps = "  - id: cheap\n    prompt: hi\n    provider: lcoal\n    model: llama3.2\n"
    path = pipeline(tmp_path, local, steps)
    result = cli("validate", path)
    assert result.exit_code == 1
    assert (
        "mixed.yaml:9:13: steps[0].provider: unknown provider 'lcoal' (did you mean 'local'?)"
        in result.output
    )
    ran = cli("run", path)
    assert ran.exit_code == 1 and "unknown provider 'lcoal'" in ran.output
    assert local.requests == []


def test_a_provider_field_on_a_tool_step_is_misplaced(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: 1\nname: bad\nsteps:\n  - id: a\n    template: hi\n    provider: local\n"
    )
    result = cli("validate", path)
    assert result.exit_code == 1
    assert "bad.yaml:6:5: steps[0].provider: 'provider' only applies to prompt steps" in (
        result.output
    )


def test_a_missing_key_of_a_provider_named_in_a_provider_field_fails_first(
    servers, cli, tmp_path, monkeypatch
):
    hosted, local = servers
    monkeypatch.delenv("LOCAL_KEY")
    steps = MIXED.replace("model: local/llama3.2", "provider: local\n    model: llama3.2")
    result = cli("run", pipeline(tmp_path, local, steps))
    assert result.exit_code == 2
    assert f"provider local ({local.base_url}) needs credentials: set LOCAL_KEY" in result.output
    assert len(result.output.strip().splitlines()) <= 2  # the error, and its hint
    assert hosted.requests == [] and local.requests == []


# -- plan -------------------------------------------------------------------------------------
def test_plan_shows_where_every_llm_step_goes_when_it_runs_and_when_it_replays(
    servers, cli, tmp_path
):
    hosted, local = servers
    path = pipeline(tmp_path, local, MIXED)
    for actions in (("run", "unknown"), ("replay", "replay")):  # hard waits for cheap at first
        steps = cli.json("plan", path)["steps"]
        cheap, hard = steps["cheap"], steps["hard"]
        assert (cheap["action"], hard["action"]) == actions
        assert (cheap["provider"], cheap["base_url"]) == ("local", local.base_url)
        assert (hard["provider"], hard["base_url"]) == (None, hosted.base_url)
        text = cli("plan", path).output
        assert f"cheap  prompt  [provider local at {local.base_url}]  (" in text
        assert f"hard   prompt  [default server at {hosted.base_url}]  (" in text
        markdown = cli("plan", path, "--format", "markdown").output
        assert f"| provider local at {local.base_url}; " in markdown
        cli("run", path)


# -- providers in the user settings -------------------------------------------------------------
def settings_file(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "settings.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def bare(tmp_path: Path, steps: str) -> Path:
    """A pipeline that declares no providers."""
    path = tmp_path / "bare.yaml"
    path.write_text("version: 1\nname: bare\nsteps:\n" + textwrap.dedent(steps))
    return path


def test_a_provider_defined_only_in_the_user_settings_serves_the_pipeline(
    servers, cli, tmp_path, isolated_home
):
    _, local = servers
    settings_file(
        isolated_home,
        f"""\
        providers:
          local: {{base_url: "{local.base_url}", api_key_env: LOCAL_KEY, api: chat}}
        """,
    )
    path = bare(tmp_path, MIXED + "  - id: named\n    prompt: hi\n    provider: local\n")
    assert cli("validate", path).exit_code == 0
    plan = cli.json("plan", path)["steps"]
    assert (plan["cheap"]["provider"], plan["cheap"]["base_url"]) == ("local", local.base_url)
    doc = json.loads(cli("run", path, "--json").stdout)
    outputs = {sid: step["output"] for sid, step in doc["steps"].items()}
    assert outputs == {"cheap": "from local", "hard": "from hosted", "named": "from local"}
    assert sorted(r.json["model"] for r in local.chat_requests) == ["gpt-4o-mini", "llama3.2"]


def test_the_pipelines_provider_wins_over_the_settings_one_of_the_same_name(
    servers, cli, tmp_path, isolated_home
):
    _, local = servers
    nowhere = "http://127.0.0.1:9/v1"  # nothing listens there
    settings_file(isolated_home, f'providers:\n  local: {{base_url: "{nowhere}"}}\n')
    doc = json.loads(cli("run", pipeline(tmp_path, local, MIXED), "--json").stdout)
    assert doc["steps"]["cheap"]["output"] == "from local"
    assert len(local.chat_requests) == 1


def test_a_settings_provider_without_its_key_fails_before_anything_runs(
    servers, cli, tmp_path, isolated_home
):
    hosted, local = servers
    settings_file(
        isolated_home,
        f'providers:\n  local: {{base_url: "{local.base_url}", api_key_env: OLLAMA_KEY}}\n',
    )
    result = cli("run", bare(tmp_path, MIXED))
    assert result.exit_code == 2
    assert "needs credentials: set OLLAMA_KEY" in result.output
    assert hosted.requests == [] and local.requests == []


def test_a_settings_file_with_a_problem_is_reported_with_its_position(
    servers, cli, tmp_path, isolated_home
):
    hosted, local = servers
    path = settings_file(isolated_home, "providers:\n  local: {base_url: ftp://local}\n")
    result = cli("run", bare(tmp_path, MIXED))
    assert result.exit_code == 2
    assert "1 problem(s) in the settings file:" in result.output
    assert f"{path}:2:21: providers.local.base_url: " in result.output
    assert hosted.requests == [] and local.requests == []


def test_stepchain_settings_names_the_settings_file(servers, cli, tmp_path, monkeypatch):
    _, local = servers
    elsewhere = tmp_path / "elsewhere.yaml"
    monkeypatch.setenv("STEPCHAIN_SETTINGS", str(elsewhere))
    path = bare(tmp_path, MIXED)
    result = cli("run", path)
    assert result.exit_code == 2
    assert f"no such settings file: {elsewhere}" in result.output
    elsewhere.write_text(f'providers:\n  local: {{base_url: "{local.base_url}", api: chat}}\n')
    monkeypatch.setenv("LOCAL_KEY", "unused")
    monkeypatch.setenv("OPENAI_API_KEY", "hosted-key")  # the provider's default key variable
    doc = json.loads(cli("run", path, "--json").stdout)
    assert doc["steps"]["cheap"]["output"] == "from local"
    assert local.chat_requests[0].headers["authorization"] == "Bearer hosted-key"
