"""The Python API inside async code, and the StepChain 0.3 names (SPEC §8)."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from pathlib import Path

import pytest
import stepchain
from stepchain import StepChainError, adecompose, aexecute, load_pipeline

from tests.support.fake_openai import FakeOpenAI, Reply

PIPELINE = """
version: 1
name: api
tools:
  echo: {type: function, function: "tools:echo"}
steps:
  - {id: first, tool: echo, with: {value: one}}
  - {id: second, tool: echo, with: {value: "{{ steps.first.output }}"}}
"""


def test_aexecute_runs_inside_an_event_loop(write, calls_log):
    path = write("p.yaml", PIPELINE)

    async def main():
        return await aexecute(path, run_id="async-run")

    results = asyncio.run(main())
    assert [(r.step_id, r.status, r.output) for r in results] == [
        ("first", "completed", "one"),
        ("second", "completed", "one"),
    ]


@pytest.mark.parametrize(
    ("call", "name", "instead"),
    [
        (lambda p: stepchain.execute(p), "execute", "aexecute"),
        (lambda p: stepchain.Executor().execute(p), "Executor.execute", "Executor.arun"),
        (lambda p: stepchain.Executor().run(p), "Executor.run", "Executor.arun"),
        (lambda p: stepchain.decompose("a task"), "decompose", "adecompose"),
    ],
)
def test_sync_api_inside_a_running_loop_names_the_async_one(write, calls_log, call, name, instead):
    path = write("p.yaml", PIPELINE)

    async def main():
        call(path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an un-awaited coroutine would warn here
        with pytest.raises(StepChainError) as caught:
            asyncio.run(main())
        gc.collect()
    assert caught.value.message == (
        f"{name}() cannot be called inside a running event loop (e.g. in an async def)"
    )
    assert caught.value.hint == f"use `await {instead}(...)` there"


def test_adecompose_inside_an_event_loop(tmp_path, monkeypatch):
    answer = {"version": 1, "name": "t", "steps": [{"id": "a", "prompt": "Say hi."}]}
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        server.script(Reply.json(answer))
        pipeline = asyncio.run(adecompose("Say hi to the user."))
    assert [s.id for s in pipeline.steps] == ["a"]


def test_step_has_the_03_names(write):
    path = write(
        "p.yaml",
        """
        version: 1
        name: names
        tools:
          echo: {type: function, function: "tools:echo"}
        steps:
          - {id: a, tool: echo, with: {value: x}}
          - {id: b, prompt: "Use {{ steps.a.output }}", needs: []}
        """,
    )
    a, b = load_pipeline(path).steps
    assert (a.tool, a.tool_input, a.dependencies) == ("echo", {"value": "x"}, [])
    assert (b.tool, b.tool_input, b.dependencies) == (None, {}, ["a"])


def summarise(text: str) -> str:
    """Summarise a text in one line."""
    return text[:10]


def test_decompose_takes_a_03_tool_list_and_python_callables(tmp_path, monkeypatch):
    answer = {"version": 1, "name": "t", "steps": [{"id": "a", "prompt": "Say hi."}]}
    tools = [
        "web_search",
        {
            "type": "mcp",
            "server_label": "db",
            "server_url": "https://mcp.example.org/mcp",
            "allowed_tools": ["read_only_query"],
            "require_approval": "always",
            "cache_ttl": 3600,
        },
        {"type": "function", "function": {"name": "short"}, "implementation": summarise},
        summarise,
    ]
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        server.script(Reply.json(answer))
        pipeline = stepchain.decompose("Say hi.", tools=tools)
    assert set(pipeline.tools) == {"web_search", "db", "short", "summarise"}
    assert pipeline.tools["db"].server_url == "https://mcp.example.org/mcp"
    assert pipeline.tools["db"].cache == "3600s"
    assert pipeline.tools["short"].function == f"{__name__}:summarise"
    assert pipeline.tools["summarise"].description == "Summarise a text in one line."


def test_decompose_refuses_tools_it_cannot_name(tmp_path, monkeypatch):
    with pytest.raises(stepchain.UsageError, match=r"tools\[0\]: 'web_browse' is not a tool"):
        stepchain.decompose("x", tools=["web_browse"])
    with pytest.raises(stepchain.UsageError, match="cannot be imported by name"):
        stepchain.decompose("x", tools=[lambda text: text])


def test_on_step_hook_sees_each_finished_step(write, calls_log):
    path = write("p.yaml", PIPELINE)
    seen: list[tuple[str, str]] = []
    stepchain.Executor(on_step=lambda r: seen.append((r.step_id, r.status))).run(path)
    assert seen == [("first", "completed"), ("second", "completed")]

    class Audited(stepchain.Executor):
        def on_step(self, result):
            seen.append((result.step_id, "audited"))
            raise RuntimeError("the audit log is down")  # logged; the run goes on

    result = Audited().run(path)
    assert result.status == "completed"
    assert seen[-2:] == [("first", "audited"), ("second", "audited")]


def test_overriding_a_method_the_engine_never_calls_fails_loudly():
    with pytest.raises(StepChainError) as caught:

        class AuditedExecutor(stepchain.Executor):
            async def execute_step(self, step, context):
                return None

    assert caught.value.message == (
        "AuditedExecutor.execute_step overrides a method StepChain never calls"
    )
    assert "on_step" in caught.value.hint


# -- Python callables as function tools (execute(..., tools=...)) --------------------------
CALLED: list[str] = []


def shout(text: str) -> str:
    """Say it louder."""
    CALLED.append(text)
    return text.upper() + "!"


SHOUTING = """
version: 1
name: shouting
steps:
  - {id: loud, tool: shout, with: {text: hi}}
  - {id: louder, tool: yell, with: {text: "{{ steps.loud.output }}"}}
"""


def recorded_runs() -> list[str]:
    storage = stepchain.Storage()
    try:
        return [row["run_id"] for row in storage.list_runs(10)]
    finally:
        storage.close()


def test_execute_runs_python_callables_as_function_tools(write):
    CALLED.clear()
    path = write("p.yaml", SHOUTING)
    results = stepchain.execute(path, run_id="given", tools={"shout": shout, "yell": shout})
    assert [(r.step_id, r.status, r.output) for r in results] == [
        ("loud", "completed", "HI!"),
        ("louder", "completed", "HI!!"),
    ]
    assert CALLED == ["hi", "HI!"]  # the callable itself, no consent asked: the caller's code
    # a second run replays: the callable's module source is in the cache key
    again = stepchain.execute(path, tools={"shout": shout, "yell": shout})
    assert all(r.cached for r in again) and CALLED == ["hi", "HI!"]


def test_executor_takes_a_03_tool_list_and_replaces_same_named_tools(write):
    CALLED.clear()
    path = write(
        "p.yaml", SHOUTING.replace("steps:", "tools:\n  shout: {type: web_search}\nsteps:")
    )
    tools = [shout, {"type": "function", "function": {"name": "yell"}, "implementation": shout}]

    async def main():
        return await stepchain.Executor(2).arun(path, tools=tools)

    result = asyncio.run(main())
    assert result.status == "completed"
    assert result.steps["louder"].output == "HI!!"
    assert CALLED == ["hi", "HI!"]


def test_aexecute_takes_tools_too(write):
    CALLED.clear()
    path = write("p.yaml", SHOUTING)

    async def main():
        return await aexecute(path, tools={"shout": shout, "yell": shout})

    assert [r.output for r in asyncio.run(main())] == ["HI!", "HI!!"]


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ("shout", "tools must be a mapping of names to functions or tool definitions, or a list"),
        (
            {"shout": lambda text: text, "yell": shout},
            "tool 'shout': '<lambda>' cannot be imported by name",
        ),
        ([shout, "web_browse"], "tools[1]: 'web_browse' is not a tool StepChain knows"),
        ([shout, {"type": "mcp"}], "tools[1]: an MCP tool needs a server_label to name it"),
    ],
)
def test_tools_that_cannot_be_used_are_refused_before_anything_runs(write, tools, message):
    CALLED.clear()
    path = write("p.yaml", SHOUTING)
    with pytest.raises(stepchain.UsageError) as caught:
        stepchain.execute(path, run_id="refused", tools=tools)
    assert caught.value.message.startswith(message)
    assert CALLED == [] and recorded_runs() == []


def test_a_pipeline_still_missing_a_tool_says_where(write):
    path = write("p.yaml", SHOUTING)
    with pytest.raises(stepchain.PipelineInvalid) as caught:
        stepchain.execute(path, run_id="missing", tools={"shout": shout})
    [problem] = caught.value.problems
    assert problem.format().startswith(f"{path}:5:")
    assert "yell" in problem.message
    assert recorded_runs() == []


def refuse(query: str) -> dict:
    """Refuse what is not a SELECT (the guide's safe_database_tool)."""
    if not query.strip().upper().startswith("SELECT"):
        raise ValueError("Only SELECT queries allowed")
    return {"rows": []}


def test_the_guides_monitoring_and_debugging_code_runs(write, tmp_path):
    """The 0.3 guide's ExecutionMetrics and debug_failed_execution, as the README maps them."""
    settings = stepchain.setup_stepchain(storage_path=tmp_path / "state", log_level="WARNING")
    assert settings.home == tmp_path / "state"
    path = write(
        "p.yaml",
        """
        version: 1
        name: guide
        description: Check the orders table
        steps:
          - {id: ok, tool: query, description: A fine query, with: {query: SELECT 1}}
          - {id: bad, tool: query, with: {query: "DROP TABLE orders"}, needs: [ok]}
        """,
    )
    executor = stepchain.Executor(max_concurrent=5)
    results = executor.execute(path, run_id="guide", tools={"query": refuse})
    durations = {
        r.step_id: (r.completed_at - r.started_at).total_seconds()
        for r in results
        if r.completed_at and r.started_at
    }
    assert set(durations) == {"ok", "bad"} and all(d >= 0 for d in durations.values())

    state = stepchain.Storage().load_run_state("guide")
    assert state.plan.task_description == "Check the orders table"
    assert len(state.plan.steps) == 2
    [failed] = [r for r in state.results if r.status == "failed"]
    assert (failed.step_id, failed.error_kind, failed.attempts) == ("bad", "tool", 1)
    assert "Only SELECT queries allowed" in failed.error
    step = next(s for s in state.plan.steps if s.id == failed.step_id)
    assert (step.tool, step.tool_input, step.dependencies) == (
        "query",
        {"query": "DROP TABLE orders"},
        ["ok"],
    )
    assert state.plan.steps[0].description == "A fine query"
    statuses = {r.step_id: r.status for r in state.results}
    assert [statuses[d] for d in step.dependencies] == ["completed"]


APPROVAL = """
version: 1
name: approval
tools:
  flaky:
    type: mcp
    command: [{python}, "{server}"]
    require_approval: always
steps:
  - id: pid
    tool: flaky.pid
"""


def test_hints_name_the_python_argument_in_the_api_and_the_flag_on_the_cli(write, cli):
    server = Path(__file__).parent / "support" / "mcp_servers.py"
    path = write("p.yaml", APPROVAL.format(python=sys.executable, server=server))

    with pytest.raises(StepChainError) as consent:
        stepchain.Executor().run(path, approve=True)
    assert "pass allow_run=True for this run only" in consent.value.hint
    with pytest.raises(StepChainError) as approval:
        stepchain.Executor().run(path, allow_run=True)  # no terminal here to ask on
    assert approval.value.hint == "review the pipeline's tool calls, then pass approve=True"
    assert "--" not in consent.value.hint + approval.value.hint

    refused = cli("run", path)
    assert refused.exit_code == 2  # CommandsNotAllowed: a usage error
    assert "pass --allow-run for this run only" in refused.stderr
    unapproved = cli("run", path, "--allow-run")
    assert unapproved.exit_code == 1
    assert "hint: review the pipeline's tool calls, then pass --approve" in unapproved.stderr
    assert "=True" not in refused.stderr + unapproved.stderr
    assert recorded_runs() == []  # refused before anything ran


SCRIPT = '''
import json
import stepchain


def shout(text: str) -> str:
    """Say it louder."""
    return text.upper() + "!"


results = stepchain.execute("p.yaml", tools={"shout": shout, "yell": shout})
print(json.dumps([[r.step_id, r.status, r.output, r.cached] for r in results]))
'''


def test_a_function_of_the_running_script_is_a_tool_and_editing_it_runs_again(write, tmp_path):
    """The 0.3 habit: tools defined in the script itself (`__main__`), run as given; the
    script's source is in the cache key, so an edit is not answered from the cache."""
    import json
    import subprocess

    write("p.yaml", SHOUTING)
    script = write("script.py", SCRIPT)

    def run() -> list:
        done = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert run() == [["loud", "completed", "HI!", False], ["louder", "completed", "HI!!", False]]
    assert run() == [["loud", "completed", "HI!", True], ["louder", "completed", "HI!!", True]]
    script.write_text(SCRIPT.replace('"!"', '"?"'))
    assert run() == [["loud", "completed", "HI?", False], ["louder", "completed", "HI??", False]]
