"""StepResult.error_kind: what failed, from the error's class, through the real CLI and API."""

from __future__ import annotations

import json

import stepchain

from tests.support.fake_openai import FakeOpenAI, Reply

FAST = "defaults: {retries: 1, backoff: {initial: 0.01, max: 0.02}}\n"


def test_llm_failures_have_their_kind(write, tmp_path, monkeypatch):
    path = write(
        "p.yaml",
        "version: 1\nname: kinds\n"
        + FAST
        + """
steps:
  - {id: limited, prompt: "limited", timeout: 2}
  - {id: refused, prompt: "refused"}
  - {id: broken, prompt: "broken"}
""",
    )

    def respond(request: dict) -> Reply:
        text = json.dumps(request)
        if "limited" in text:
            return Reply.rate_limit(retry_after=0)
        if "refused" in text:
            return Reply.error(400, "bad temperature")
        return Reply.server_error(503)

    with FakeOpenAI(responder=respond) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        result = stepchain.Executor().run(path, run_id="kinds")
    kinds = {sid: r.error_kind for sid, r in result.steps.items()}
    assert kinds == {"limited": "rate_limit", "refused": "bad_request", "broken": "server"}
    # 429s are waited out, not retried (SPEC §11), until the wait would pass the timeout
    assert result.steps["limited"].attempts == 1
    state = stepchain.Storage().load_run_state("kinds")  # and it is recorded
    assert {r.step_id: r.error_kind for r in state.results} == kinds


def test_tool_template_and_timeout_failures_in_json(cli, write, calls_log):
    path = write(
        "p.yaml",
        """
        version: 1
        name: kinds
        tools:
          boom: {type: function, function: "tools:boom"}
          anap: {type: function, function: "tools:anap"}
        steps:
          - {id: tool, tool: boom}
          - {id: template, template: "{{ inputs.missing.deeper }}", when: "true"}
          - {id: slow, tool: anap, with: {name: s, seconds: 5}, timeout: 0.05, retries: 0}
          - {id: fine, template: ok}
        inputs:
          missing: {type: object, default: {}}
        """,
    )
    doc = json.loads(cli("run", path, "--json").stdout)
    steps = doc["steps"]
    assert steps["tool"]["error_kind"] == "tool"
    assert steps["template"]["error_kind"] == "template"
    assert steps["slow"]["error_kind"] == "timeout"
    assert "error_kind" not in steps["fine"]
