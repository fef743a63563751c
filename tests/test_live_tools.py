"""Tools that read live state: cache policies on tool definitions, MCP annotations, `plan`'s reasons.

The git tests run the real `mcp-server-git` (the `test` extra) on a temporary repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import REPO

from tests.support.fake_openai import FakeOpenAI, Reply

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada",
    "GIT_AUTHOR_EMAIL": "ada@example.org",
    "GIT_COMMITTER_NAME": "Ada",
    "GIT_COMMITTER_EMAIL": "ada@example.org",
}


@pytest.fixture(autouse=True)
def allow_servers(monkeypatch):
    """The pipelines here start stdio MCP servers: consent given for the test (SPEC §10)."""
    monkeypatch.setenv("STEPCHAIN_ALLOW_RUN", "1")


def git(repo, *args: str) -> None:
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def commit(repo, name: str, message: str) -> None:
    (repo / name).write_text(message, encoding="utf-8")
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    commit(path, "a.txt", "first commit")
    return path


@pytest.fixture
def example(tmp_path):
    shutil.copytree(REPO / "pipelines" / "examples", tmp_path / "examples")
    return tmp_path / "examples" / "git-log.yaml"


def test_git_example_sees_a_new_commit_on_the_next_run(cli, repo, example):
    first = cli.json("run", example, "-i", f"repo={repo}")
    assert first["status"] == "completed"
    assert "first commit" in first["outputs"]["log"]
    assert "working tree clean" in first["steps"]["status"]["output"]

    commit(repo, "b.txt", "second commit")
    (repo / "c.txt").write_text("not staged", encoding="utf-8")
    plan = cli.json("plan", example, "-i", f"repo={repo}")
    assert plan["steps"]["log"]["action"] == "run"
    assert plan["steps"]["log"]["detail"] == "cache: false, from tools.git.cache"

    second = cli.json("run", example, "-i", f"repo={repo}")
    assert "second commit" in second["outputs"]["log"]
    assert second["steps"]["log"]["cached"] is False
    assert "c.txt" in second["steps"]["status"]["output"]


def test_mcp_tools_without_a_policy_follow_the_servers_annotations(cli, repo, example):
    # mcp-server-git marks git_log read-only, idempotent and closed-world: cached by default.
    text = example.read_text(encoding="utf-8").replace("    cache: false\n", "")
    example.write_text(text, encoding="utf-8")
    before = cli.json("plan", example, "-i", f"repo={repo}")
    assert before["steps"]["log"]["action"] == "run"
    assert "sets no cache:" in before["steps"]["log"]["detail"]
    cli.json("run", example, "-i", f"repo={repo}")
    plan = cli.json("plan", example, "-i", f"repo={repo}")
    assert plan["steps"]["log"]["action"] == "replay"
    assert plan["steps"]["log"]["detail"] == (
        "cached: the server marks git_log read-only and closed-world (tools.git)"
    )
    assert cli.json("run", example, "-i", f"repo={repo}")["steps"]["log"]["cached"] is True


SALES = """
version: 1
name: sales
tools:
  db:
    type: mcp
    command: [python, sales_mcp.py]
    env: {{SALES_DB: "{db}"}}
    allowed_tools: [whoami, list_tables]
{extra}
steps:
  - id: who
    tool: db.whoami
  - id: tables
    tool: db.list_tables
"""


def sales(tmp_path, extra: str = "") -> object:
    shutil.copytree(REPO / "pipelines" / "examples", tmp_path / "ex", dirs_exist_ok=True)
    path = tmp_path / "ex" / "sales.yaml"
    path.write_text(SALES.format(db=tmp_path / "sales.db", extra=extra), encoding="utf-8")
    return path


def test_an_mcp_tool_without_annotations_is_not_cached(cli, tmp_path):
    path = sales(tmp_path)
    first = cli.json("run", path)
    second = cli.json("run", path)
    # whoami gives no annotations: asked again (a new server, a new pid)
    assert second["steps"]["who"]["cached"] is False
    assert second["steps"]["who"]["output"]["pid"] != first["steps"]["who"]["output"]["pid"]
    assert second["steps"]["tables"]["cached"] is True  # marked read-only and closed-world
    detail = cli.json("plan", path)["steps"]["who"]["detail"]
    assert detail.startswith("not cached: tools.db sets no cache:")


def test_cache_true_on_the_tool_definition_caches_and_the_step_can_override(cli, tmp_path):
    path = sales(tmp_path, "    cache: 1h")
    cli.json("run", path)
    plan = cli.json("plan", path)
    assert plan["steps"]["who"]["action"] == "replay"
    assert plan["steps"]["who"]["detail"] == (
        "cached result of the same request; cache policy (entries kept 3600s) from tools.db.cache"
    )
    text = path.read_text(encoding="utf-8").replace(
        "tool: db.whoami", "tool: db.whoami\n    cache: false"
    )
    path.write_text(text, encoding="utf-8")
    plan = cli.json("plan", path)
    assert plan["steps"]["who"] == {**plan["steps"]["who"], "action": "run"}
    assert plan["steps"]["who"]["detail"] == "cache: false, from steps[0].cache"


def test_function_tools_take_a_cache_policy(cli, write):
    write("clock.py", "import time\n\ndef now() -> float:\n    return time.time()\n")
    path = write(
        "p.yaml",
        """
        version: 1
        name: clock
        tools:
          now: {type: function, function: "clock:now", cache: false}
        steps:
          - id: t
            tool: now
        """,
    )
    first = cli.json("run", path)
    second = cli.json("run", path)
    assert second["steps"]["t"]["cached"] is False
    assert second["steps"]["t"]["output"] != first["steps"]["t"]["output"]


def test_a_bad_tool_cache_value_is_refused_with_its_position(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: bad
        tools:
          now: {type: function, function: "clock:now", cache: sometimes}
        steps:
          - id: t
            tool: now
        """,
    )
    result = cli("validate", path)
    assert result.exit_code == 1
    assert f"{path}:4:" in result.output
    assert "tools.now.cache" in result.output


def test_command_templates_that_cannot_be_rendered_up_front_are_refused(cli, write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: bad
        secrets: [TOKEN]
        tools:
          git:
            type: mcp
            command: [mcp-server-git, --repository, "{{ steps.a.output }}", "{{ secrets.TOKEN }}"]
        steps:
          - id: a
            template: x
          - id: t
            tool: git.git_log
        """,
    )
    result = cli("validate", path)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(
        line.startswith(f"{path}:7:49:")
        and "tools.git.command[2]" in line
        and "step outputs" in line
        for line in lines
    ), result.output
    assert any(
        "tools.git.command[3]" in line and "secrets cannot go in a command line" in line
        for line in lines
    ), result.output


# -- prompt steps that offer live tools -----------------------------------------------------
@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


CLOCK = """
version: 1
name: clock
tools:
  now: {{type: function, function: "clock:now", cache: {policy}}}
steps:
  - id: ask
    prompt: What time is it? Use the tool.
    tools: [now]
"""


def test_a_prompt_offering_an_uncached_tool_is_not_replayed(cli, write, fake):
    write("clock.py", "import time\n\ndef now() -> float:\n    return time.time()\n")
    path = write("p.yaml", CLOCK.format(policy="false"))
    fake.responder = lambda request: (
        Reply.text("it is late")
        if any(i.get("type") == "function_call_output" for i in request.get("input", []))
        else Reply.tool_call("now", {})
    )
    first = cli.json("run", path)
    assert first["steps"]["ask"]["output"] == "it is late"
    plan = cli.json("plan", path)["steps"]["ask"]
    assert plan["action"] == "run"
    assert plan["detail"] == "cache: false, from tools.now.cache, a tool the step offers"
    second = cli.json("run", path)
    assert second["steps"]["ask"]["cached"] is False
    assert len(fake.requests) == 4  # the model asked twice per run: the clock ran again

    path.write_text(CLOCK.format(policy="1h"), encoding="utf-8")  # a TTL: kept that long
    cli.json("run", path)
    plan = cli.json("plan", path)["steps"]["ask"]
    assert plan["action"] == "replay"
    assert plan["detail"] == (
        "cached result of the same request; cache policy (entries kept 3600s) from tools.now.cache"
    )
    assert cli.json("run", path)["steps"]["ask"]["cached"] is True


def test_a_prompt_offering_mcp_tools_is_cached_only_if_the_server_allows_all(cli, tmp_path, fake):
    fake.default = Reply.text("two tables")
    path = sales(tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.split("steps:")[0] + "steps:\n  - id: ask\n    prompt: Which tables?\n"
        "    tools: [db]\n",
        encoding="utf-8",
    )
    cli.json("run", path)
    plan = cli.json("plan", path)["steps"]["ask"]
    assert plan["action"] == "run"
    assert plan["detail"].endswith(
        "not cached: it offers tools.db, which set no cache:, so its answer is cached only if "
        "the servers mark every tool offered read-only and closed-world"
    )
    assert cli.json("run", path)["steps"]["ask"]["cached"] is False  # whoami: no annotations

    # offered only list_tables, which the server marks read-only and closed-world: cached
    path.write_text(
        path.read_text(encoding="utf-8").replace("[whoami, list_tables]", "[list_tables]"),
        encoding="utf-8",
    )
    cli.json("run", path)
    plan = cli.json("plan", path)["steps"]["ask"]
    assert plan["action"] == "replay"
    assert plan["detail"] == (
        "cached: the servers mark every tool offered read-only and closed-world (tools.db)"
    )
    assert cli.json("run", path)["steps"]["ask"]["cached"] is True
