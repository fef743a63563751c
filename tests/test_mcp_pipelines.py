"""MCP tools in real pipelines: the example server over stdio and HTTP, through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, calls

SALES = REPO / "pipelines" / "examples" / "sales_mcp.py"


@pytest.fixture(autouse=True)
def allow_servers(monkeypatch):
    """Every pipeline here starts a stdio MCP server: consent given for the test (SPEC §10)."""
    monkeypatch.setenv("STEPCHAIN_ALLOW_RUN", "1")


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = f"/proc/{pid}/status"
    return not (os.path.exists(status) and "zombie" in Path(status).read_text())


def sales_pipeline(write, tmp_path, steps: str, tool_extra: str = "", head: str = "") -> object:
    shutil.copy(SALES, tmp_path / "sales_mcp.py")
    return write(
        "p.yaml",
        f"""
version: 1
name: mcp-test
{head}
tools:
  db:
    type: mcp
    command: [python, sales_mcp.py]
    env: {{SALES_DB: "{tmp_path / "sales.db"}"}}
    allowed_tools: [read_only_query, list_tables, whoami]
{tool_extra}
steps:
{steps}
""",
    )


QUERY = """
  - id: rows
    tool: db.read_only_query
    with: {sql: "SELECT quarter, COUNT(*) AS n FROM orders WHERE quarter = ? GROUP BY quarter", params: ["Q2 2023"]}
"""


def test_example_pipeline_runs_against_the_real_server(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "pipelines" / "examples", tmp_path / "examples")
    doc = cli.json("run", tmp_path / "examples" / "mcp-sales.yaml", "-i", "quarter=Q3 2023")
    assert doc["status"] == "completed"
    assert doc["steps"]["tables"]["output"][0]["name"] == "orders"
    rows = doc["steps"]["by_category"]["output"]
    assert sum(r["orders"] for r in rows) == 40
    assert doc["outputs"]["report"].startswith("# Sales Q3 2023 (tables: orders)")


def test_tool_step_output_is_the_structured_result_and_replays_without_the_server(
    cli, write, tmp_path
):
    path = sales_pipeline(write, tmp_path, QUERY)
    first = cli.json("run", path)
    assert first["steps"]["rows"]["output"] == [{"quarter": "Q2 2023", "n": 40}]
    (tmp_path / "sales.db").unlink()
    second = cli.json("run", path)
    assert second["steps"]["rows"]["cached"] is True
    assert not (tmp_path / "sales.db").exists()  # the server was never started


def test_one_server_per_run_shared_by_all_steps(cli, write, tmp_path):
    steps = "\n".join(f"  - {{id: who{i}, tool: db.whoami, cache: false}}" for i in range(3))
    doc = cli.json("run", sales_pipeline(write, tmp_path, steps))
    pids = {doc["steps"][f"who{i}"]["output"]["pid"] for i in range(3)}
    assert len(pids) == 1
    assert not running(pids.pop())  # shut down at the end of the run


def test_refused_query_is_a_step_failure_with_the_servers_message(cli, write, tmp_path):
    steps = '  - {id: bad, tool: db.read_only_query, with: {sql: "DELETE FROM orders"}, retries: 0}'
    result = cli("run", sales_pipeline(write, tmp_path, steps), "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 1
    assert "only a single SELECT statement is allowed, not 'DELETE'" in doc["steps"]["bad"]["error"]


def test_bad_arguments_are_refused_before_the_call(cli, write, tmp_path):
    steps = "  - {id: bad, tool: db.read_only_query, with: {query: oops}, retries: 0}"
    doc = json.loads(cli("run", sales_pipeline(write, tmp_path, steps), "--json").stdout)
    error = doc["steps"]["bad"]["error"]
    assert "read_only_query" in error and "'sql' is a required property" in error


def test_tool_outside_allowed_tools_is_refused_by_the_validator(cli, write, tmp_path):
    path = sales_pipeline(write, tmp_path, "  - {id: nuke, tool: db.drop_everything}")
    result = cli("run", path)
    assert result.exit_code == 1
    assert "MCP tool 'drop_everything' is not in allowed_tools of 'db'" in result.stderr
    assert "nothing was run" in result.stderr


def test_require_approval_without_a_terminal_fails_before_anything_runs(cli, write, tmp_path):
    path = sales_pipeline(write, tmp_path, QUERY, tool_extra="    require_approval: always")
    refused = cli("run", path)
    assert refused.exit_code == 1
    assert "MCP server(s) db require approval for every call" in refused.stderr
    assert "--approve" in refused.stderr
    assert not (tmp_path / "sales.db").exists()
    approved = cli.json("run", path, "--approve")
    assert approved["steps"]["rows"]["output"][0]["n"] == 40


def test_server_env_is_rendered_from_secrets_and_never_recorded(cli, write, tmp_path, monkeypatch):
    monkeypatch.setenv("SALES_TOKEN", "tok-very-secret")
    path = sales_pipeline(
        write,
        tmp_path,
        "  - {id: who, tool: db.whoami, cache: false}",
        head="secrets: [SALES_TOKEN]",
    )
    path.write_text(
        path.read_text().replace("env: {", 'env: {SALES_MCP_TOKEN: "{{ secrets.SALES_TOKEN }}", ')
    )
    result = cli("run", path, "--json", "--run-id", "tok")
    assert json.loads(result.stdout)["steps"]["who"]["output"]["token_set"] is True
    assert "tok-very-secret" not in cli("runs", "show", "tok", "--json").stdout
    assert "tok-very-secret" not in result.stdout + result.stderr


def test_server_that_fails_to_start_is_named_in_the_error(cli, write, tmp_path):
    path = write(
        "p.yaml",
        """
        version: 1
        name: t
        tools:
          broken: {type: mcp, command: [python, -c, "import sys; print('no database', file=sys.stderr); sys.exit(3)"]}
        steps: [{id: q, tool: broken.anything, retries: 0}]
        """,
    )
    doc = json.loads(cli("run", path, "--json").stdout)
    error = doc["steps"]["q"]["error"]
    assert "MCP server 'broken' failed to start" in error and "no database" in error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(SALES), "--http", str(port)],
        env=os.environ | {"SALES_DB": str(tmp_path / "http.db")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp"
    server.terminate()
    server.wait(10)


def test_streamable_http_server(cli, write, http_server):
    path = write(
        "p.yaml",
        f"""
        version: 1
        name: t
        tools: {{db: {{type: mcp, url: "{http_server}", allowed_tools: [read_only_query]}}}}
        steps:
          - id: n
            tool: db.read_only_query
            with: {{sql: "SELECT COUNT(*) AS n FROM orders"}}
        """,
    )
    assert cli.json("run", path)["steps"]["n"]["output"] == [{"n": 160}]


def test_sigint_during_a_run_leaves_no_server_behind(cli, write, tmp_path, calls_log):
    path = sales_pipeline(
        write,
        tmp_path,
        """
  - {id: who, tool: db.whoami, cache: false}
  - {id: wait, tool: anap, with: {name: "{{ steps.who.output.pid }}", seconds: 30}}
""",
        tool_extra='  anap: {type: function, function: "tools:anap"}',
    )
    proc = cli.spawn("run", path, "--run-id", "mcp-int")
    deadline = time.monotonic() + 30
    while not any(line.startswith("start ") for line in calls(calls_log)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    pid = int(calls(calls_log)[0].split()[1])
    assert running(pid)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert not running(pid)
