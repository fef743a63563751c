"""The README's command examples are real commands: run each one."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
from conftest import REPO

COMMANDS = [
    line[2:].strip()
    for line in (REPO / "README.md").read_text().splitlines()
    if line.startswith("$ stepchain ")
]


def test_readme_lists_commands():
    assert len(COMMANDS) >= 8


@pytest.fixture(scope="module")
def readme_home(tmp_path_factory):
    """One state folder for all README commands: `runs show` reads what `run` recorded."""
    return tmp_path_factory.mktemp("readme-home")


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_succeeds(command, readme_home, monkeypatch):
    monkeypatch.setenv("STEPCHAIN_HOME", str(readme_home))
    result = subprocess.run(
        shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() or result.stderr.strip()


def test_readme_setup_runs_the_main_job():
    setup = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    assert "stepchain run pipelines/sales-report.yaml" in setup
    ci = (REPO / ".ci" / "run").read_text()
    test_command = (
        next(line for line in setup.splitlines() if "pytest" in line).split("#")[0].strip()
    )
    assert test_command in ci


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The Python API block runs as written, from a folder holding the example pipelines."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(from stepchain import .*?)```", text, re.S).group(1)
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPCHAIN_HOME")  # the example passes storage_path itself
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    statuses = {r.step_id: r.status for r in namespace["results"]}
    assert statuses.pop("chart") == "skipped"  # `when: inputs.top_n >= 5` with top_n 3
    assert set(statuses.values()) == {"completed"}
    assert all(r.attempts == 0 for r in namespace["results"])  # the resumed run reran nothing
    assert namespace["failed"] == []
    assert namespace["run"].status == "completed"
    recorded = {r.step_id: r.status for r in namespace["state"].results}
    assert recorded == {r.step_id: r.status for r in namespace["results"]}
    assert (tmp_path / ".stepchain").is_dir()


# every name the StepChain 0.3 best-practices guide's examples use
GUIDE_NAMES = (
    "decompose(task)",
    "max_steps",
    "model=",
    "temperature",
    '"web_search"',
    '"code_interpreter"',
    "server_label",
    "server_url",
    "allowed_tools",
    '["*"]',
    "require_approval",
    '"env"',
    "cache_ttl",
    "implementation",
    "ValueError",
    "execute(plan)",
    "run_id",
    "resume=True",
    "r.step_id",
    "r.status",
    "r.output",
    "r.error",
    '"rate_limit" in str(step.error)',
    "r.started_at",
    "r.completed_at",
    "total_seconds()",
    "len(str(result.output)) / 4",
    "Executor()",
    "Executor(max_concurrent=5)",
    "execute_step",
    "SIGTERM",
    "setup_stepchain",
    "storage_path",
    "log_level",
    "OPENAI_API_KEY",
    'logging.getLogger("stepchain")',
    "Storage().load_run_state",
    "state.plan",
    "state.results",
    "plan.steps",
    "step.id",
    "step.description",
    "step.tool",
    "step.tool_input",
    "step.dependencies",
    "plan.task_description",
    "max_retries",
    "dependencies",
)


def test_readme_maps_every_name_of_the_03_guide():
    text = (REPO / "README.md").read_text()
    section = text.split("### Coming from StepChain 0.3")[1].split("\n## ")[0]
    missing = [name for name in GUIDE_NAMES if name not in section]
    assert not missing
