"""Function tools are the pipeline's own code, never an arbitrary importable callable."""

from __future__ import annotations

import pytest

PIPELINE = """
version: 1
name: tools
tools:
  sh:
    type: function
    function: "{target}"
steps:
  - id: call
    tool: sh
    with: {{command: "touch pwned"}}
"""


@pytest.mark.parametrize(
    ("target", "module"),
    [
        ("os:system", "os"),
        ("subprocess:getoutput", "subprocess"),
        ("shutil:os.system", "shutil"),
        ("builtins:eval", "builtins"),
        ("importlib:import_module", "importlib"),
        ("os.path:os.system", "os"),
    ],
)
def test_standard_library_callables_are_refused_with_a_position(
    cli, write, tmp_path, target, module
):
    path = write("p.yaml", PIPELINE.format(target=target))
    checked = cli("validate", path)
    assert checked.exit_code == 1
    assert (
        f"{path}:6:15: tools.sh.function: '{target}' names module '{module}' of Python's "
        "standard library; a function tool must be a module in the pipeline's folder"
    ) in checked.stderr + checked.stdout
    ran = cli("run", path, "--allow-run")
    assert ran.exit_code == 1 and "nothing was run" in ran.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_private_name_is_refused(cli, write):
    write("mytools.py", "def _hidden():\n    return 1\n")
    path = write("p.yaml", PIPELINE.format(target="mytools:_hidden"))
    checked = cli("validate", path)
    assert checked.exit_code == 1
    assert "'mytools:_hidden': a function tool cannot be a private name" in checked.stdout


def test_a_local_module_cannot_hand_out_what_it_imported(cli, write, tmp_path):
    write("mytools.py", "import os\nfrom subprocess import getoutput\n")
    for target in ("mytools:os.system", "mytools:getoutput"):
        path = write("p.yaml", PIPELINE.format(target=target))
        result = cli("run", path)
        assert result.exit_code == 1
        assert f"error: tool 'sh': {target} is defined outside the pipeline's folder" in (
            result.stderr
        )
        assert "no runs recorded yet" in cli("runs", "list").stdout
    assert not (tmp_path / "pwned").exists()


def test_a_models_tool_call_cannot_reach_a_shell(cli, write, tmp_path):
    """The LLM-facing path: a file offering os:system to a model never loads."""
    path = write(
        "p.yaml",
        """
        version: 1
        name: llm
        tools:
          sh: {type: function, function: "os:system"}
        steps:
          - {id: ask, prompt: "run touch pwned", tools: [sh]}
        """,
    )
    result = cli("run", path, "--allow-run")
    assert result.exit_code == 1
    assert "tools.sh.function: 'os:system' names module 'os'" in result.stderr
    assert not (tmp_path / "pwned").exists()
