"""The engine's MCP client against real servers: the example sales server over stdio and
streamable HTTP, and the misbehaving server in tests/support/mcp_servers.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from stepchain.errors import RetryableStepError, StepError, StepTimeout
from stepchain.tools.mcp.client import McpConnection, McpPool, McpServerSpec

from tests.support.mcp_servers import SCRIPT as SUPPORT_SERVERS

ROOT = Path(__file__).resolve().parents[1]
SALES = ROOT / "pipelines" / "examples" / "sales_mcp.py"
READ_ONLY = ("read_only_query", "list_tables", "whoami")

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def stdio_spec(name: str, argv: list[str], **overrides: Any) -> McpServerSpec:
    fields: dict[str, Any] = {"env": {}, "cwd": None, "allowed_tools": None} | overrides
    return McpServerSpec(name=name, command=argv, url=None, **fields)


def sales_spec(db: Path, *, token: str | None = None, **overrides: Any) -> McpServerSpec:
    env = {"SALES_DB": str(db)} | ({"SALES_MCP_TOKEN": token} if token else {})
    return stdio_spec("db", [sys.executable, str(SALES)], env=env, **overrides)


def flaky_spec(name: str = "flaky", **overrides: Any) -> McpServerSpec:
    return stdio_spec(name, [sys.executable, str(SUPPORT_SERVERS)], **overrides)


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """One event loop for the module, so a started server can serve several tests."""
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture(scope="module")
def sales(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpConnection]:
    """A stdio connection to the example server, limited to its read-only tools."""
    db = tmp_path_factory.mktemp("stdio") / "sales.db"
    connection = McpConnection(sales_spec(db, token="s3cret-token", allowed_tools=READ_ONLY))
    run(connection.start())
    yield connection
    run(connection.close())


@pytest.fixture(scope="module")
def sales_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example server serving streamable HTTP on a free loopback port."""
    folder = tmp_path_factory.mktemp("http")
    port = free_port()
    with (folder / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(SALES), "--http", str(port)],
            env=os.environ | {"SALES_DB": str(folder / "sales.db")},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the HTTP server did not come up"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(10)


def test_list_tools_offers_only_allowed_tools(run: Run, sales: McpConnection) -> None:
    tools = run(sales.list_tools())
    assert [t["name"] for t in tools] == ["read_only_query", "list_tables", "whoami"]
    query = tools[0]
    assert "SELECT" in query["description"]
    assert query["input_schema"]["required"] == ["sql"]
    assert query["input_schema"]["properties"]["params"]["type"] == "array"


def test_read_only_query_with_params_returns_rows(run: Run, sales: McpConnection) -> None:
    sql = "SELECT * FROM orders WHERE quarter = ? AND amount > ? ORDER BY id"
    rows = run(
        sales.call_tool("read_only_query", {"sql": sql, "params": ["Q4 2023", 100]}, timeout=10)
    )
    assert rows and all(row["quarter"] == "Q4 2023" and row["amount"] > 100 for row in rows)
    assert set(rows[0]) == {"id", "quarter", "category", "product", "amount", "customer"}


def test_demo_data_is_deterministic(run: Run, sales: McpConnection) -> None:
    sql = "SELECT quarter, count(*) AS n FROM orders GROUP BY quarter ORDER BY quarter"
    rows = run(sales.call_tool("read_only_query", {"sql": sql}, timeout=10))
    assert rows == [{"quarter": f"Q{q} 2023", "n": 40} for q in (1, 2, 3, 4)]
    tables = run(sales.call_tool("list_tables", {}, timeout=10))
    assert tables == [
        {
            "name": "orders",
            "columns": ["id", "quarter", "category", "product", "amount", "customer"],
        }
    ]


def test_tool_outside_allowed_tools_is_refused_naming_tool_and_server(
    run: Run, sales: McpConnection
) -> None:
    with pytest.raises(StepError) as refused:
        run(sales.call_tool("drop_everything", {}, timeout=10))
    message = str(refused.value)
    assert "'drop_everything'" in message and "'db'" in message
    assert "read_only_query, list_tables, whoami" in message
    assert not refused.value.retryable


def test_refusal_needs_no_server(run: Run) -> None:
    never_starts = stdio_spec("db", ["/nonexistent/server"], allowed_tools=("read_only_query",))
    with pytest.raises(StepError, match="'drop_everything' of server 'db' is not allowed"):
        run(McpConnection(never_starts).call_tool("drop_everything", {}, timeout=1))


def test_unknown_tool_lists_the_available_ones(run: Run) -> None:
    connection = McpConnection(flaky_spec(allowed_tools=("pid", "hang", "vanished")))
    try:
        with pytest.raises(StepError) as unknown:
            run(connection.call_tool("vanished", {}, timeout=10))
    finally:
        run(connection.close())
    assert str(unknown.value) == "MCP server 'flaky' has no tool 'vanished'; available: hang, pid"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"sql": "SELECT 1", "params": "Q4 2023"}, "params: 'Q4 2023' is not of type 'array'"),
        ({"params": []}, "arguments: 'sql' is a required property"),
        ({"sql": 42}, "sql: 42 is not of type 'string'"),
    ],
)
def test_bad_arguments_are_refused_before_the_call(
    run: Run, sales: McpConnection, arguments: dict[str, Any], expected: str
) -> None:
    with pytest.raises(StepError) as refused:
        run(sales.call_tool("read_only_query", arguments, timeout=10))
    assert str(refused.value) == (
        f"arguments for MCP tool db.read_only_query do not match its input schema: {expected}"
    )


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DELETE FROM orders", "only a single SELECT statement is allowed, not 'DELETE'"),
        ("SELECT 1; DROP TABLE orders", "You can only execute one statement at a time"),
        ("WITH t AS (SELECT 1) DELETE FROM orders", "not authorized"),
    ],
)
def test_tool_error_becomes_step_error_with_the_servers_message(
    run: Run, sales: McpConnection, sql: str, expected: str
) -> None:
    with pytest.raises(StepError) as failed:
        run(sales.call_tool("read_only_query", {"sql": sql}, timeout=10))
    assert str(failed.value).startswith("MCP tool db.read_only_query failed:")
    assert expected in str(failed.value)
    assert not failed.value.retryable
    count = run(
        sales.call_tool("read_only_query", {"sql": "SELECT count(*) AS n FROM orders"}, timeout=10)
    )
    assert count == [{"n": 160}]


def test_env_reaches_the_server_and_nothing_else_leaks(
    run: Run, sales: McpConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(sales.call_tool("whoami", {}, timeout=10))["token_set"] is True
    monkeypatch.setenv("SALES_MCP_TOKEN", "from-the-engine-environment")
    undeclared = McpConnection(sales_spec(tmp_path / "sales.db"))
    try:
        assert run(undeclared.call_tool("whoami", {}, timeout=10))["token_set"] is False
    finally:
        run(undeclared.close())


def test_concurrent_calls_from_many_tasks_share_one_server(run: Run, sales: McpConnection) -> None:
    async def many() -> list[Any]:
        sql = "SELECT count(*) AS n FROM orders WHERE quarter = ?"
        calls = [
            sales.call_tool(
                "read_only_query", {"sql": sql, "params": [f"Q{i % 4 + 1} 2023"]}, timeout=10
            )
            for i in range(8)
        ]
        return await asyncio.gather(*calls, sales.call_tool("whoami", {}, timeout=10))

    *counts, who = run(many())
    assert counts == [[{"n": 40}]] * 8
    assert who == run(sales.call_tool("whoami", {}, timeout=10))


def test_streamable_http_lists_calls_and_reports_errors(run: Run, sales_url: str) -> None:
    spec = McpServerSpec("web", None, sales_url, {}, None, ("read_only_query",))

    async def session() -> tuple[list[dict[str, Any]], Any]:
        connection = McpConnection(spec)
        try:
            tools = await connection.list_tools()
            sql = "SELECT DISTINCT category FROM orders WHERE quarter = ? ORDER BY 1"
            rows = await connection.call_tool(
                "read_only_query", {"sql": sql, "params": ["Q1 2023"]}, timeout=10
            )
            with pytest.raises(StepError, match="not 'UPDATE'"):
                await connection.call_tool(
                    "read_only_query", {"sql": "UPDATE orders SET amount = 0"}, timeout=10
                )
            with pytest.raises(StepError, match="'whoami' of server 'web' is not allowed"):
                await connection.call_tool("whoami", {}, timeout=10)
            return tools, rows
        finally:
            await connection.close()

    tools, rows = run(session())
    assert [t["name"] for t in tools] == ["read_only_query"]
    assert rows == [
        {"category": c} for c in ("Electronics", "Furniture", "Office Supplies", "Software")
    ]


def test_server_that_fails_to_start_names_it_and_quotes_its_stderr(run: Run) -> None:
    exits = "import os, sys; print('boom: bad token', os.environ['TOKEN'], file=sys.stderr); sys.exit(3)"
    spec = stdio_spec("broken", [sys.executable, "-c", exits], env={"TOKEN": "hunter22"})
    with pytest.raises(StepError) as failed:
        run(McpConnection(spec).start())
    message = str(failed.value)
    assert message.startswith("MCP server 'broken' failed to start:")
    assert "boom: bad token ***" in message and "hunter22" not in message
    assert not failed.value.retryable


def test_missing_server_command_fails_to_start_for_good(run: Run) -> None:
    connection = McpConnection(stdio_spec("gone", ["/nonexistent/mcp-server"]))
    with pytest.raises(StepError, match=r"'gone' failed to start: .*No such file") as failed:
        run(connection.start())
    assert not failed.value.retryable


def test_server_program_that_is_not_executable_fails_to_start_for_good(
    run: Run, tmp_path: Path
) -> None:
    script = tmp_path / "server.py"
    script.write_text("print('never run')\n")
    connection = McpConnection(stdio_spec("noexec", [str(script)]))
    with pytest.raises(StepError, match=r"'noexec' failed to start: .*Permission denied") as failed:
        run(connection.start())
    assert not failed.value.retryable


def test_unreachable_http_server_fails_to_start_retryably(run: Run) -> None:
    spec = McpServerSpec("web", None, f"http://127.0.0.1:{free_port()}/mcp", {}, None, None)
    with pytest.raises(RetryableStepError, match="MCP server 'web' failed to start"):
        run(McpConnection(spec).start())


def test_start_timeout_stops_a_server_that_never_answers(run: Run) -> None:
    silent = stdio_spec("silent", [sys.executable, "-c", "import sys; sys.stdin.read()"])
    connection = McpConnection(silent, start_timeout=0.5)
    with pytest.raises(
        StepError,
        match=re.escape("'silent' failed to start: no answer to the handshake within 0.5s"),
    ):
        run(connection.start())


def test_crash_mid_call_is_retryable_and_the_next_call_restarts_the_server(run: Run) -> None:
    connection = McpConnection(flaky_spec())
    try:
        first = run(connection.call_tool("pid", {}, timeout=10))["pid"]
        with pytest.raises(RetryableStepError) as crashed:
            run(connection.call_tool("crash", {}, timeout=10))
        assert "MCP server 'flaky' closed the connection (during tool 'crash')" in str(
            crashed.value
        )
        assert "fatal: the flaky server crashed on purpose" in str(crashed.value)
        second = run(connection.call_tool("pid", {}, timeout=10))["pid"]
    finally:
        run(connection.close())
    assert second != first
    assert not running(first) and not running(second)


def test_server_that_died_between_calls_is_restarted_without_an_error(run: Run) -> None:
    connection = McpConnection(flaky_spec())
    try:
        first = run(connection.call_tool("pid", {}, timeout=10))["pid"]
        assert run(connection.call_tool("quit", {}, timeout=10)) == "bye"
        run(asyncio.sleep(0.5))  # the server exits right after answering
        second = run(connection.call_tool("pid", {}, timeout=10))["pid"]
    finally:
        run(connection.close())
    assert second != first
    assert not running(first) and not running(second)


def test_hanging_tool_times_out_and_the_connection_recovers(run: Run) -> None:
    connection = McpConnection(flaky_spec())
    try:
        hung = run(connection.call_tool("pid", {}, timeout=10))["pid"]
        started = time.monotonic()
        with pytest.raises(StepTimeout) as timed_out:
            run(connection.call_tool("hang", {}, timeout=0.5))
        assert time.monotonic() - started < 3
        assert str(timed_out.value).startswith(
            "MCP server 'flaky' did not answer tool 'hang' within 0.5s"
        )
        fresh = run(connection.call_tool("pid", {}, timeout=10))["pid"]
    finally:
        run(connection.close())
    assert fresh != hung
    assert not running(hung) and not running(fresh)


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("garbage", "sent something that is not JSON-RPC: 'this is not JSON-RPC'"),
        ("bad_result", "sent an invalid reply (content: Input should be a valid list)"),
    ],
)
def test_garbage_from_the_server_is_retryable(run: Run, tool: str, expected: str) -> None:
    connection = McpConnection(flaky_spec())
    try:
        for _ in range(2):  # the second attempt runs on a restarted server
            with pytest.raises(RetryableStepError) as garbled:
                run(connection.call_tool(tool, {}, timeout=5))
            assert f"MCP server 'flaky' {expected} (during tool '{tool}')" in str(garbled.value)
    finally:
        run(connection.close())


def test_close_leaves_no_orphan_processes_and_is_idempotent(run: Run) -> None:
    connection = McpConnection(flaky_spec())
    pid = run(connection.call_tool("pid", {}, timeout=10))["pid"]
    assert running(pid)
    run(connection.close())
    assert not running(pid)
    run(connection.close())


def test_pool_starts_servers_lazily_and_closes_them_all(run: Run) -> None:
    pool = McpPool({"a": flaky_spec("a"), "b": flaky_spec("b"), "unused": flaky_spec("unused")})

    async def use() -> list[int]:
        a = await pool.get("a")
        assert await pool.get("a") is a
        with pytest.raises(
            StepError, match=re.escape("no MCP server named 'nope' (known: a, b, unused)")
        ):
            await pool.get("nope")
        b = await pool.get("b")
        return [(await c.call_tool("pid", {}, timeout=10))["pid"] for c in (a, b)]

    pids = run(use())
    assert len(set(pids)) == 2 and all(running(pid) for pid in pids)
    run(pool.close_all())
    assert not any(running(pid) for pid in pids)
    run(pool.close_all())


SIGINT_SCRIPT = """
import asyncio, sys
from stepchain.tools.mcp.client import McpPool, McpServerSpec

async def main():
    spec = McpServerSpec("db", [sys.executable, sys.argv[1]], None, {"SALES_DB": sys.argv[2]}, None, None)
    async with McpPool({"db": spec}) as pool:
        db = await pool.get("db")
        print((await db.call_tool("whoami", {}, timeout=10))["pid"], flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def test_sigint_stops_the_servers_of_a_run(tmp_path: Path) -> None:
    engine = subprocess.Popen(
        [sys.executable, "-c", SIGINT_SCRIPT, str(SALES), str(tmp_path / "sales.db")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert engine.stdout is not None
        pid = int(engine.stdout.readline())
        assert running(pid)
        engine.send_signal(signal.SIGINT)
        _, stderr = engine.communicate(timeout=15)
    finally:
        engine.kill()
    assert "KeyboardInterrupt" in stderr
    assert not running(pid)
