"""Reviewing a file (validate, plan) runs none of its code."""

from __future__ import annotations

import pytest

TOOLS = """
open(__file__ + '.imported', 'w').close()


def square(x: int) -> int:
    '''The square of x.'''
    return x * x
"""


@pytest.fixture
def pipeline(write, tmp_path):
    write("sqtools.py", TOOLS)
    return write(
        "p.yaml",
        """
        version: 1
        name: sq
        tools:
          square: {type: function, function: "sqtools:square"}
        steps:
          - {id: nine, tool: square, with: {x: 3}}
          - {id: ask, prompt: "Square {{ steps.nine.output }}", tools: [square]}
        """,
    )


def imported(tmp_path) -> bool:
    return (tmp_path / "sqtools.py.imported").exists()


def test_validate_and_plan_do_not_import_function_tools(cli, pipeline, tmp_path):
    assert cli("validate", pipeline).exit_code == 0
    plan = cli.json("plan", pipeline)
    assert plan["steps"]["nine"]["action"] == "run"
    assert not imported(tmp_path)


def test_plan_knows_a_replay_without_importing(cli, pipeline, tmp_path, write):
    only_tool = write(
        "q.yaml",
        """
        version: 1
        name: sq
        tools:
          square: {type: function, function: "sqtools:square"}
        steps:
          - {id: nine, tool: square, with: {x: 3}}
        """,
    )
    assert cli.json("run", only_tool)["steps"]["nine"]["output"] == 9
    (tmp_path / "sqtools.py.imported").unlink()
    plan = cli.json("plan", only_tool)
    assert plan["steps"]["nine"]["action"] == "replay"
    assert not imported(tmp_path)
    # editing the module's source changes the tool's identity: its result is not replayed
    (tmp_path / "sqtools.py").write_text(TOOLS.replace("x * x", "x * x * x"))
    assert cli.json("plan", only_tool)["steps"]["nine"]["action"] == "run"
    assert cli.json("run", only_tool)["steps"]["nine"]["output"] == 27


def test_a_tool_only_an_import_can_describe_is_unknown_in_plan(cli, write, tmp_path):
    write(
        "deco.py",
        "import functools\nopen(__file__ + '.imported', 'w').close()\n\n"
        "@functools.lru_cache\ndef f(x: int) -> int:\n    return x\n",
    )
    path = write(
        "p.yaml",
        """
        version: 1
        name: deco
        tools:
          f: {type: function, function: "deco:f"}
        steps:
          - {id: ask, prompt: "hi", tools: [f]}
        """,
    )
    plan = cli.json("plan", path)
    assert plan["steps"]["ask"]["action"] == "unknown"
    assert "known only by importing it, which plan does not do" in plan["steps"]["ask"]["detail"]
    assert not (tmp_path / "deco.py.imported").exists()
