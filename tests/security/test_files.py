"""Files a user names: a pipe, a symlink loop, binary data or deep nesting give one clear line."""

from __future__ import annotations

import os

import pytest

PIPELINE = (
    "version: 1\nname: f\ninputs: {x: {type: string, default: a}}\nsteps: [{id: a, template: x}]\n"
)


@pytest.fixture
def pipeline(write):
    return write("p.yaml", PIPELINE)


def fifo(tmp_path, name):
    path = tmp_path / name
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_pipe_as_the_pipeline_is_refused_without_hanging(cli, tmp_path, command):
    path = fifo(tmp_path, "p.yaml")
    result = cli.proc(command, path, timeout=60)  # reading the pipe would block forever
    assert result.returncode == 2
    assert f"error: {path} is not a regular file (a pipe or a device?)" in result.stderr


def test_a_pipe_as_the_inputs_file_is_refused_without_hanging(cli, tmp_path, pipeline):
    path = fifo(tmp_path, "in.yaml")
    result = cli.proc("run", pipeline, "--inputs-file", path, timeout=60)
    assert result.returncode == 2
    assert f"error: {path} is not a regular file (a pipe or a device?)" in result.stderr
    assert "no runs recorded yet" in cli("runs", "list").stdout


def test_a_symlink_loop_is_a_clear_error(cli, tmp_path, pipeline):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    for args in (["validate", loop], ["run", pipeline, "--inputs-file", loop]):
        result = cli(*args)
        assert result.exit_code == 2
        assert "cannot read" in result.stderr and str(loop) in result.stderr
        assert "Too many levels of symbolic links" in result.stderr


def test_binary_files_are_clear_errors(cli, tmp_path, pipeline):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    for args in (["validate", binary], ["run", pipeline, "--inputs-file", binary]):
        result = cli(*args)
        assert result.exit_code == 2
        assert f"error: {binary} is not UTF-8 text: invalid start byte at byte 0" in result.stderr


def test_a_deeply_nested_inputs_file_is_a_clear_error(cli, tmp_path, pipeline):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    result = cli("run", pipeline, "--inputs-file", deep)
    assert result.exit_code == 2
    assert f"error: {deep}: nested too deeply to read" in result.stderr
    assert "no runs recorded yet" in cli("runs", "list").stdout


@pytest.mark.parametrize("command", ["validate", "plan", "run", "trust"])
def test_every_command_reading_a_pipeline_refuses_bad_files_in_one_line(cli, tmp_path, command):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 100)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    expected = {
        loop: "Too many levels of symbolic links",
        binary: f"{binary} is not UTF-8 text: invalid start byte at byte 0",
        deep: f"{deep}:1:1001: nested more than 200 levels deep: flatten the structure",
    }
    for path, message in expected.items():
        result = cli(command, path)
        assert result.exit_code in (1, 2), (path, result.output)
        assert message in result.stderr + result.stdout
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "no runs recorded yet" in cli("runs", "list").stdout
