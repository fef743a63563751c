"""`stepchain lock` and `plan --against`: what a change re-runs, visible in a diff and a PR comment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.support.fake_openai import FakeOpenAI, Reply

PIPE = """
version: 1
name: locked
inputs: {word: {type: string, default: abc}}
tools: {echo: {type: function, function: "tools:echo"}}
steps:
  - {id: a, tool: echo, with: {value: "{{ inputs.word }}"}}
  - {id: b, tool: echo, with: {value: "{{ steps.a.output }}-b"}, description: second}
  - {id: fan, foreach: "[1, 2]", tool: echo, with: {value: "{{ item }}"}}
  - {id: c, template: "{{ steps.b.output }} {{ steps.fan.output }}"}
"""


@pytest.fixture
def fake_llm(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        server.responder = lambda request: Reply.text("hello", input_tokens=12, output_tokens=6)
        yield server


def locked(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    assert cli("run", path).exit_code == 0
    result = cli("lock", path)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == f"wrote {path}.lock"
    return path


def test_lock_is_stable_yaml_with_digests_per_step(cli, write, calls_log, tmp_path):
    path = locked(cli, write, calls_log)
    lock_file = tmp_path / "p.yaml.lock"
    text = lock_file.read_bytes()
    doc = yaml.safe_load(text)
    assert doc["format"] == 1 and doc["file"] == "p.yaml" and doc["pipeline"] == "locked"
    assert list(doc["steps"]) == ["a", "b", "fan", "c"]  # the pipeline's order
    plan = json.loads(cli("plan", path, "--json").stdout)["steps"]
    for step_id, step in doc["steps"].items():
        assert step["request"] == plan[step_id]["cache_key"]  # the key `plan` computes
        assert len(step["output"]) == 64
    assert doc["steps"]["fan"]["calls"] == 2

    again = cli("lock", path)
    assert again.stderr.strip() == f"unchanged: {path}.lock"
    assert lock_file.read_bytes() == text  # byte-identical
    check = cli("lock", "--check", path)
    assert check.exit_code == 0 and "p.yaml.lock matches: 4 steps" in check.stderr


def test_lock_records_model_and_usage_of_llm_steps(cli, write, fake_llm):
    path = write("p.yaml", "version: 1\nname: t\nsteps: [{id: a, prompt: hi, model: gpt-x}]\n")
    assert cli("run", path).exit_code == 0
    cli("lock", path)
    step = yaml.safe_load(path.with_name("p.yaml.lock").read_text())["steps"]["a"]
    assert step["model"] == "gpt-x"
    assert step["usage"]["input_tokens"] == 12 and step["usage"]["output_tokens"] == 6


def test_check_names_changed_steps_and_their_dependents(cli, write, calls_log, tmp_path):
    path = locked(cli, write, calls_log)
    before = (tmp_path / "p.yaml.lock").read_bytes()
    path.write_text(PIPE.replace('-b"', '-B"'))
    check = cli("lock", "--check", path)
    assert check.exit_code == 1
    assert check.stderr.splitlines()[0] == (
        "error: p.yaml.lock is out of date: 2 step(s) changed: b (tool arguments); "
        "c (upstream output (b))"
    )
    assert (tmp_path / "p.yaml.lock").read_bytes() == before  # --check writes nothing


def test_check_without_a_cache_still_finds_the_change(cli, write, calls_log, tmp_path):
    path = locked(cli, write, calls_log)
    assert cli("cache", "clear").exit_code == 0  # as in CI: the lock, but no cache
    assert cli("lock", "--check", path).exit_code == 0
    path.write_text(PIPE.replace("{{ steps.b.output }} {{", "{{ steps.b.output }}! {{"))
    check = cli("lock", "--check", path)
    assert check.exit_code == 1
    assert "1 step(s) changed: c (template)" in check.stderr


def test_inert_fields_and_inputs(cli, write, calls_log):
    path = locked(cli, write, calls_log)
    path.write_text(PIPE.replace("description: second", "description: changed"))
    assert cli("lock", "--check", path).exit_code == 0  # a description changes no request
    check = cli("lock", "--check", path, "-i", "word=xyz")
    assert check.exit_code == 1
    assert "a (inputs)" in check.stderr and "b (upstream output (a))" in check.stderr


def test_new_and_removed_steps(cli, write, calls_log):
    path = locked(cli, write, calls_log)
    text = PIPE.replace(
        '  - {id: c, template: "{{ steps.b.output }} {{ steps.fan.output }}"}\n', ""
    )
    path.write_text(text + '  - {id: d, template: "{{ steps.a.output }}"}\n')
    check = cli("lock", "--check", path)
    assert "d (new step); c (removed)" in check.stderr


def test_plan_against_the_lock_as_markdown(cli, write, calls_log):
    path = locked(cli, write, calls_log)
    path.write_text(PIPE.replace('-b"', '-B"'))
    result = cli("plan", path, "--against", f"{path}.lock", "--format", "markdown")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("## StepChain plan: `locked`")
    assert "**4 steps in 3 layers** · replay 2 · run 1 · unknown 1" in text
    assert "**Estimated cost:** 1 tool call; ~0 tokens (from the lock's recorded usage)" in text
    assert "| `b` | tool arguments |\n| `c` | upstream output (b) |" in text
    assert (
        "| 1 | `b` | tool | **run** | tool arguments | no cached result for this request |" in text
    )
    assert "| 0 | `a` | tool | **replay** |  | cached result of the same request" in text
    assert "```mermaid\nflowchart TD\n" in text
    assert "    class s1,s3 changed\n```" in text
    as_json = json.loads(cli("plan", path, "--against", f"{path}.lock", "--json").stdout)
    assert as_json["changed"] == {"b": ["tool arguments"], "c": ["upstream output (b)"]}
    plain = cli("plan", path, "--against", f"{path}.lock").stdout
    assert "changed against " in plain and "b (tool arguments); c (upstream output (b))" in plain


def test_markdown_without_a_lock(cli, write, calls_log):
    path = write("p.yaml", PIPE)
    text = cli("plan", path, "--format", "markdown").stdout
    assert "Changed against" not in text and "class s" not in text
    assert "**Estimated cost:** 4 tool calls; ~0 tokens (no lock given" in text


def test_bad_locks_are_one_line_errors(cli, write, calls_log, tmp_path):
    path = locked(cli, write, calls_log)
    lock_file = tmp_path / "p.yaml.lock"
    good = lock_file.read_text()

    lock_file.write_text(good.replace("format: 1", "format: 9"))
    result = cli("lock", "--check", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {lock_file}:2: lock format 9 is newer than this StepChain reads (1)"
    )

    lock_file.write_text(good)
    other = write("q.yaml", PIPE.replace("name: locked", "name: other"))
    result = cli("plan", other, "--against", lock_file)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {lock_file}:4: this lock is for p.yaml, not q.yaml"
    )

    lock_file.write_text("steps: [unclosed\n")
    result = cli("lock", "--check", path)
    assert result.exit_code == 2 and "not a valid lock file (YAML error)" in result.stderr

    lock_file.unlink()
    result = cli("lock", "--check", path)
    assert result.exit_code == 2
    assert "cannot read the lock file" in result.stderr and "stepchain lock p.yaml" in result.stderr


def test_check_of_several_files_skips_unlocked_ones(cli, write, calls_log):
    path = locked(cli, write, calls_log)
    other = write("q.yaml", PIPE.replace("name: locked", "name: other"))
    data = write("data.yaml", "just: data\n")
    result = cli("lock", "--check", "--skip-unlocked", path, other, data)
    assert result.exit_code == 0 and result.stderr.strip() == "p.yaml.lock matches: 4 steps"
    path.write_text(PIPE.replace('-b"', '-B"'))
    result = cli("lock", "--check", path, other)
    assert result.exit_code == 2  # the worst of: p.yaml out of date (1), q.yaml unlocked (2)
    assert "error: p.yaml.lock is out of date" in result.stderr
    assert "q.yaml.lock: cannot read the lock file" in result.stderr


def test_the_worked_example_lock_holds_and_names_a_changed_prompt(cli, tmp_path):
    example = REPO / "pipelines" / "gitops" / "release-notes.yaml"
    check = cli("lock", "--check", example)  # no cache at all: as a CI job sees it
    assert check.exit_code == 0, check.stderr
    copy = tmp_path / "release-notes.yaml"
    copy.write_text(example.read_text().replace("at most six words", "at most four words"))
    (tmp_path / "release-notes.yaml.lock").write_bytes(Path(f"{example}.lock").read_bytes())
    check = cli("lock", "--check", copy)
    assert check.exit_code == 1
    assert "2 step(s) changed: title (prompt); notes (upstream output (title))" in check.stderr
