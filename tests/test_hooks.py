"""The pre-commit hooks of `.pre-commit-hooks.yaml`, tried with `pre-commit try-repo`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PIPE = """
version: 1
name: hooked
inputs: {word: {type: string, default: abc}}
steps:
  - {id: a, template: "{{ inputs.word }}"}
  - {id: b, template: "{{ steps.a.output }}!"}
"""

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def try_repo(repo: Path, home: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """All of StepChain's hooks on `files`, as a user's pre-commit would run them."""
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(home),
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "--files", *files],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_validate_and_lock_check_hooks(cli, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    pipeline = repo / "p.yaml"
    pipeline.write_text(textwrap.dedent(PIPE).lstrip())
    assert cli("lock", pipeline).exit_code == 0
    git(repo, "add", ".")

    passed = try_repo(repo, tmp_path / "pre-commit", "p.yaml", "p.yaml.lock")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "stepchain validate" in passed.stdout and "stepchain lock --check" in passed.stdout

    pipeline.write_text(textwrap.dedent(PIPE).lstrip().replace("}}!", "}}?"))
    failed = try_repo(repo, tmp_path / "pre-commit", "p.yaml")
    assert failed.returncode == 1
    assert "p.yaml.lock is out of date: 1 step(s) changed: b (template)" in failed.stdout


def test_the_action_is_composite_and_calls_real_commands(cli):
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite" and "pipelines" in action["inputs"]
    scripts = "\n".join(step.get("run", "") for step in action["runs"]["steps"])
    for command in ("validate --format github", "plan", "lock --check --skip-unlocked"):
        assert f"stepchain {command}" in scripts
    for flag in ("--against", "--format markdown", "GITHUB_STEP_SUMMARY"):
        assert flag in scripts
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["stepchain-validate", "stepchain-lock-check"]
    assert cli("lock", "--help").exit_code == 0
