"""Hostile MCP servers, through the real CLI: results too large to hold, a crash with another
call in flight, a hang, garbage on stdout, a secret on stderr, and a `kill -9` of StepChain.

The servers are real processes: tests/support/hostile_mcp.py (the SDK's `MCPServer`) and the
hand-written JSON-RPC server in tests/support/mcp_servers.py. Every failure is checked for its
exit code, its one-line message, the absence of a traceback, and that nothing else was lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.hostile_mcp import SCRIPT as HOSTILE
from tests.support.mcp_servers import SCRIPT as FLAKY

LIMIT_ENV = "STEPCHAIN_MAX_MCP_RESULT_BYTES"
SECRET = "Tok3n-very-s3cret"


@pytest.fixture(autouse=True)
def allow_servers(monkeypatch):
    """Every pipeline here starts a stdio MCP server: consent given for the test (SPEC §10)."""
    monkeypatch.setenv("STEPCHAIN_ALLOW_RUN", "1")


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    return folder


def pipeline(write, state: Path, steps: str, head: str = "") -> Path:
    return write(
        "p.yaml",
        f"""
version: 1
name: hostile
{head}
tools:
  h:
    type: mcp
    command: [python, "{HOSTILE}"]
    env: {{HOSTILE_STATE: "{state}"}}
  flaky: {{type: mcp, command: [python, "{FLAKY}"]}}
steps:
{steps}
""",
    )


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return not status.parent.parent.joinpath("self").exists()


def starts(state: Path) -> list[int]:
    return [int(line) for line in (state / "starts").read_text().split()]


def failed_run(cli, *args: str) -> dict:
    """Run through the CLI; it must fail (exit 1) cleanly. The --json document."""
    result = cli(*args, "--json")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stdout + result.stderr
    return json.loads(result.stdout)


def recorded(cli, run_id: str) -> dict:
    result = cli("runs", "show", run_id, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["steps"]


SIZE_STEPS = """
  - {id: big, tool: h.huge, with: {mb: 50}, retries: 2}
  - {id: who, tool: h.pid}
  - {id: after, tool: h.pid, needs: [who], cache: false}
"""


def test_a_huge_result_fails_its_step_at_once_with_a_size_error(cli, write, state):
    path = pipeline(write, state, SIZE_STEPS)
    doc = failed_run(cli, "run", path, "--run-id", "big")
    big = doc["steps"]["big"]
    message = (
        "MCP server 'h' answered tool 'huge' with more than 16 MiB, the limit; "
        f"set {LIMIT_ENV} to allow larger results"
    )
    assert big["error"] == message  # one line, naming the limit and how to raise it
    assert (big["status"], big["error_kind"], big["attempts"]) == ("failed", "too_large", 1)
    # the reply was dropped unread: the server lived on and answered the other steps
    assert doc["steps"]["who"]["status"] == doc["steps"]["after"]["status"] == "completed"
    assert doc["steps"]["who"]["output"] == doc["steps"]["after"]["output"]
    assert starts(state) == [doc["steps"]["who"]["output"]["pid"]]
    steps = recorded(cli, "big")
    assert steps["who"]["status"] == "completed" and steps["big"]["error"] == message


def test_a_larger_limit_lets_the_resumed_run_finish(cli, write, state, monkeypatch):
    path = pipeline(write, state, SIZE_STEPS.replace("mb: 50", "mb: 2"))
    monkeypatch.setenv(LIMIT_ENV, "1MiB")
    doc = failed_run(cli, "run", path, "--run-id", "grow")
    assert "with more than 1 MiB, the limit" in doc["steps"]["big"]["error"]
    who = doc["steps"]["who"]["output"]

    monkeypatch.setenv(LIMIT_ENV, "4MiB")
    result = cli("resume", "grow", "--json")
    assert result.exit_code == 0, result.output
    steps = json.loads(result.stdout)["steps"]
    assert steps["big"]["status"] == "completed" and len(steps["big"]["output"]) == 2 * 10**6
    assert steps["who"]["output"] == who  # kept from the first run, not run again


def test_a_malformed_limit_stops_the_run_before_anything_starts(cli, write, state, monkeypatch):
    path = pipeline(write, state, SIZE_STEPS)
    monkeypatch.setenv(LIMIT_ENV, "lots")
    result = cli("run", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {LIMIT_ENV}='lots' is not a size of at least 1 KiB"
    )
    assert "Traceback" not in result.output
    assert not (state / "starts").exists()


def test_a_message_too_large_to_match_a_request_ends_the_session(cli, write, state, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "1MiB")
    path = pipeline(
        write,
        state,
        """
  - {id: flood, tool: flaky.flood, retries: 0}
  - {id: who, tool: h.pid}
""",
    )
    doc = failed_run(cli, "run", path)
    error = doc["steps"]["flood"]["error"]
    assert error.splitlines()[0] == (
        f"MCP server 'flaky' sent a message of more than 1 MiB (raise {LIMIT_ENV} if that is "
        "expected) (during tool 'flood')"
    )
    assert doc["steps"]["who"]["status"] == "completed"


@pytest.fixture(params=["json", "events"])
def http_server(request, state):
    """The hostile server on streamable HTTP, answering with JSON or with server-sent events."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mode = ["--events"] if request.param == "events" else []
    server = subprocess.Popen(
        [sys.executable, str(HOSTILE), "--http", str(port), *mode],
        env=os.environ | {"HOSTILE_STATE": str(state)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(10)


def test_a_huge_result_over_http_fails_its_step_with_the_same_size_error(
    cli, write, http_server, monkeypatch
):
    monkeypatch.setenv(LIMIT_ENV, "1MiB")
    path = write(
        "p.yaml",
        f"""
        version: 1
        name: http
        tools: {{h: {{type: mcp, url: "{http_server}"}}}}
        steps:
          - {{id: big, tool: h.huge, with: {{mb: 2}}, retries: 2}}
          - {{id: who, tool: h.pid}}
        """,
    )
    doc = failed_run(cli, "run", path)
    big = doc["steps"]["big"]
    assert big["error"] == (
        "MCP server 'h' answered tool 'huge' with more than 1 MiB, the limit; "
        f"set {LIMIT_ENV} to allow larger results"
    )
    assert (big["error_kind"], big["attempts"]) == ("too_large", 1)
    assert doc["steps"]["who"]["status"] == "completed"


def test_a_crash_fails_only_the_call_that_caused_it(cli, write, state):
    path = pipeline(
        write,
        state,
        """
  - {id: crash, tool: h.crash_with_peer, retries: 1}
  - {id: peer, tool: h.peer, retries: 0}
""",
    )
    doc = failed_run(cli, "run", path, "--run-id", "crash")
    crash, peer = doc["steps"]["crash"], doc["steps"]["peer"]
    assert crash["error"].splitlines()[0] == (
        "MCP server 'h' closed the connection (during tool 'crash_with_peer')"
    )
    assert "fatal: crash_with_peer crashed the server" in crash["error"]  # its stderr, quoted
    assert (crash["status"], crash["error_kind"], crash["attempts"]) == ("failed", "server", 2)
    # the peer's call was in flight on the crashed server: it was resent to a fresh one
    crashed = int((state / "crashed").read_text())
    assert peer["status"] == "completed" and peer["attempts"] == 1
    assert peer["output"]["pid"] != crashed
    # bounded: the first server, one lone resend of each lost call, the crash step's retry
    # (asking for the server's tool list after the crash starts none)
    assert len(starts(state)) == 4
    assert not any(running(pid) for pid in starts(state))
    assert recorded(cli, "crash")["peer"]["output"] == peer["output"]


def test_a_hanging_call_times_out_per_its_step(cli, write, state):
    path = pipeline(
        write,
        state,
        """
  - {id: hang, tool: flaky.hang, timeout: 1, retries: 1}
  - {id: who, tool: flaky.pid, cache: false}
""",
    )
    doc = failed_run(cli, "run", path)
    hang = doc["steps"]["hang"]
    # the step's timeout and the call's are the same second: either may say so first
    assert hang["error"] in (
        "timed out after 1s (after 2 attempts)",
        "MCP server 'flaky' did not answer tool 'hang' within 1s\n"
        "  hint: the server is restarted on the next call; raise the step's timeout if it is slow"
        " (after 2 attempts)",
    )
    assert (hang["error_kind"], hang["attempts"]) == ("timeout", 2)
    assert doc["steps"]["who"]["status"] == "completed"


def test_garbage_on_stdout_is_a_server_error_and_other_steps_go_on(cli, write, state):
    path = pipeline(
        write,
        state,
        """
  - {id: junk, tool: flaky.garbage, retries: 0}
  - {id: who, tool: h.pid}
""",
    )
    doc = failed_run(cli, "run", path, "--run-id", "junk")
    junk = doc["steps"]["junk"]
    assert junk["error"].splitlines()[0] == (
        "MCP server 'flaky' sent something that is not JSON-RPC: 'this is not JSON-RPC' "
        "(during tool 'garbage')"
    )
    assert junk["error_kind"] == "server"
    assert doc["steps"]["who"]["status"] == "completed"
    result = cli("resume", "junk", "--json")  # resumable: only the failed step runs again
    assert result.exit_code == 1
    resumed = json.loads(result.stdout)["steps"]
    assert resumed["who"]["output"] == doc["steps"]["who"]["output"]
    assert starts(state) == [doc["steps"]["who"]["output"]["pid"]]


def test_a_secret_on_a_servers_stderr_is_masked(cli, write, state, monkeypatch):
    monkeypatch.setenv("TOKEN", SECRET)
    path = pipeline(
        write,
        state,
        "  - {id: leak, tool: h.leak, retries: 0}\n  - {id: who, tool: h.pid}",
        head="secrets: [TOKEN]",
    )
    path.write_text(path.read_text().replace("env: {", 'env: {TOKEN: "{{ secrets.TOKEN }}", ', 1))
    result = cli("run", path, "--json", "--run-id", "leak")
    assert result.exit_code == 1 and "Traceback" not in result.output
    doc = json.loads(result.stdout)
    assert "auth failed for *** (reversed ***, upper ***)" in doc["steps"]["leak"]["error"]
    assert doc["steps"]["who"]["status"] == "completed"
    shown = cli("runs", "show", "leak", "--json").stdout
    for form in (SECRET, SECRET[::-1], SECRET.upper()):
        assert form not in result.stdout + result.stderr + shown


def test_a_server_flooding_stderr_is_quoted_by_its_last_words_only(cli, write, state):
    path = pipeline(
        write,
        state,
        "  - {id: shout, tool: h.shout, with: {mb: 30}, retries: 0}\n  - {id: who, tool: h.pid}",
    )
    doc = failed_run(cli, "run", path)
    error = doc["steps"]["shout"]["error"]
    assert error.splitlines()[0] == "MCP server 'h' closed the connection (during tool 'shout')"
    assert error.splitlines()[-2].strip() == "fatal: out of breath"  # then the hint
    assert len(error) < 3000  # the tail only, not 30 MB
    assert doc["steps"]["who"]["status"] == "completed"


def test_servers_do_not_outlive_a_kill_9_of_stepchain(cli, write, state):
    path = pipeline(
        write, state, "  - {id: who, tool: h.pid}\n  - {id: b, tool: h.block, needs: [who]}"
    )
    engine = cli.spawn("run", path, "--run-id", "killed")
    blocked = state / "blocked"
    deadline = time.monotonic() + 60
    while not blocked.exists() or len(blocked.read_text().split()) < 2:
        assert engine.poll() is None, engine.stderr.read()
        assert time.monotonic() < deadline, "the server never got the call"
        time.sleep(0.05)
    server, child = map(int, blocked.read_text().split())
    assert running(server) and running(child)
    engine.send_signal(signal.SIGKILL)
    engine.wait(30)
    deadline = time.monotonic() + 30  # a bounded poll: the kernel signals, the launcher kills
    while running(server) or running(child):
        assert time.monotonic() < deadline, f"MCP server {server} or its child outlived stepchain"
        time.sleep(0.05)
    shown = cli("runs", "show", "killed", "--json")
    run = json.loads(shown.stdout)
    assert run["status"] == "running"  # as a kill -9 leaves it: `stepchain resume killed`
    assert run["steps"]["who"]["output"] == {"pid": server}  # the step done before is kept
