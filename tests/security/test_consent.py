"""Programs start only with consent, given for exactly one content of one file (SPEC §10)."""

from __future__ import annotations

import sys

import pytest

COMMAND = """
version: 1
name: cmd
steps:
  - id: touch
    run: [{python}, -c, "open('ran', 'w').write('yes')"]
"""


@pytest.fixture
def command_file(write):
    return write("cmd.yaml", COMMAND.format(python=sys.executable))


def test_a_command_is_refused_before_anything_starts(cli, command_file, tmp_path):
    refused = cli("run", command_file)
    assert refused.exit_code == 2
    assert f"error: {command_file} would run command `{sys.executable} -c" in refused.stderr
    assert "nobody approved this version of the file" in refused.stderr
    assert f"hint: review it, then run `stepchain trust {command_file}`" in refused.stderr
    assert "--allow-run for this run only" in refused.stderr
    assert not (tmp_path / "ran").exists()
    assert "no runs recorded yet" in cli("runs", "list").stdout


def test_trust_records_what_the_file_may_run_and_then_it_runs(cli, command_file, tmp_path):
    trusted = cli("trust", command_file)
    assert trusted.exit_code == 0
    assert f"trusted {command_file}" in trusted.stdout
    assert "command `" in trusted.stdout and "(steps.touch.run)" in trusted.stdout
    assert cli.json("run", command_file)["status"] == "completed"
    assert (tmp_path / "ran").read_text() == "yes"


def test_a_changed_file_needs_consent_again(cli, command_file, tmp_path):
    assert cli("trust", command_file).exit_code == 0
    command_file.write_text(command_file.read_text().replace("'yes'", "'changed'"))
    refused = cli("run", command_file)
    assert refused.exit_code == 2
    assert "nobody approved this version of the file" in refused.stderr
    assert not (tmp_path / "ran").exists()


def test_consent_is_for_one_file_not_its_copies(cli, command_file, tmp_path):
    assert cli("trust", command_file).exit_code == 0
    copy = tmp_path / "elsewhere" / "cmd.yaml"
    copy.parent.mkdir()
    copy.write_text(command_file.read_text())
    assert cli("run", copy).exit_code == 2
    assert not (tmp_path / "elsewhere" / "ran").exists()


def test_allow_run_is_for_one_run_only(cli, command_file, tmp_path):
    assert cli.json("run", command_file, "--allow-run")["status"] == "completed"
    (tmp_path / "ran").unlink()
    assert cli("run", command_file, "--no-cache").exit_code == 2
    assert not (tmp_path / "ran").exists()


def test_the_environment_variable_allows_too(cli, command_file, monkeypatch):
    monkeypatch.setenv("STEPCHAIN_ALLOW_RUN", "1")
    assert cli.json("run", command_file)["status"] == "completed"


def test_an_mcp_server_program_does_not_start_without_consent(cli, write, tmp_path):
    path = write(
        "mcp.yaml",
        f"""
        version: 1
        name: mcp
        tools:
          db:
            type: mcp
            command: [{sys.executable}, -c, "open('started', 'w')"]
            allowed_tools: [query]
        steps:
          - {{id: q, tool: db.query}}
        """,
    )
    refused = cli("run", path)
    assert refused.exit_code == 2
    assert f"MCP server `{sys.executable} -c open('started', 'w')` (tools.db.command)" in (
        refused.stderr
    )
    assert not (tmp_path / "started").exists()


def test_a_package_function_tool_is_not_imported_without_consent(cli, write, tmp_path, monkeypatch):
    package = tmp_path / "site"
    package.mkdir()
    (package / "outside_pkg.py").write_text(
        "open(__file__ + '.imported', 'w').close()\n\ndef hello():\n    return 'hi'\n"
    )
    monkeypatch.syspath_prepend(str(package))
    path = write(
        "pkg.yaml",
        """
        version: 1
        name: pkg
        tools:
          hello: {type: function, function: "outside_pkg:hello"}
        steps:
          - {id: one, tool: hello}
        """,
    )
    refused = cli("run", path)
    assert refused.exit_code == 2
    assert "function tool module `outside_pkg` (tools.hello.function)" in refused.stderr
    assert not (package / "outside_pkg.py.imported").exists()
    assert cli("trust", path).exit_code == 0
    assert cli.json("run", path)["steps"]["one"]["output"] == "hi"


def test_function_tools_in_the_pipelines_folder_need_no_consent(cli, write):
    write("mytools.py", "def double(x: int) -> int:\n    return 2 * x\n")
    path = write(
        "local.yaml",
        """
        version: 1
        name: local
        tools:
          double: {type: function, function: "mytools:double"}
        steps:
          - {id: d, tool: double, with: {x: 21}}
        """,
    )
    assert cli.json("run", path)["steps"]["d"]["output"] == 42


def test_validate_and_plan_list_what_a_file_would_run(cli, command_file):
    validated = cli("validate", command_file)
    assert validated.exit_code == 0
    assert "command `" in validated.stderr and "[needs consent]" in validated.stderr
    planned = cli("plan", command_file)
    assert "runs programs or code:" in planned.stdout
    assert "(steps.touch.run)  [needs consent]" in planned.stdout
    doc = cli.json("plan", command_file)
    assert doc["runs"][0]["kind"] == "command" and doc["runs"][0]["needs_consent"] is True


def test_a_damaged_trust_store_is_a_clear_error(cli, command_file, isolated_home):
    isolated_home.mkdir()
    (isolated_home / "trusted.json").write_text("{not json")
    refused = cli("run", command_file)
    assert refused.exit_code == 1
    assert "error: cannot read" in refused.stderr and "trusted.json" in refused.stderr
    assert "stepchain trust FILE" in refused.stderr


def test_the_python_api_needs_consent_too(tmp_path):
    import stepchain
    from stepchain.pipeline.load import load_pipeline_text

    pipe = load_pipeline_text(COMMAND.format(python=sys.executable).lstrip())
    with pytest.raises(stepchain.CommandsNotAllowed) as refused:
        stepchain.Executor().run(pipe)
    assert "pipeline cmd would run command" in refused.value.message
    assert refused.value.hint == (
        "review it, then pass allow_run=True (a pipeline without a file cannot be trusted)"
    )
    assert not (tmp_path / "ran").exists()
    assert stepchain.Executor().run(pipe, allow_run=True).status == "completed"
    assert (tmp_path / "ran").exists()  # a pipeline without a file runs in the working folder
