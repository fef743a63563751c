"""The whole GitOps flow in a temporary git repository, through the real CLI.

decompose (loopback server) -> commit -> plan as markdown -> run -> lock -> change one prompt
-> plan shows exactly that step and its dependents -> bundle export -> a fresh state folder
-> import -> `run --offline` gives identical outputs with zero requests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI, Reply
from tests.test_llm_cli import PLAN, answer

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def model(request: dict) -> Reply:
    """The tests' deterministic model; asked for four facts, it gives four."""
    if "Four facts" in json.dumps(request):
        return Reply.text("fact 1; fact 2; fact 3; fact 4", input_tokens=12, output_tokens=8)
    return answer(request)


@pytest.fixture
def fake(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield server


def test_decompose_lock_change_plan_bundle_offline(cli, fake, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    git(repo, "init", "-q")

    fake.script(Reply.json(PLAN))
    assert cli("decompose", "Write an article brief", "-o", "brief.yaml").exit_code == 0
    git(repo, "add", "brief.yaml")
    git(repo, "commit", "-qm", "pipeline")
    comment = cli("plan", "brief.yaml", "--format", "markdown")
    assert comment.exit_code == 0
    assert "**Estimated cost:** 3 LLM calls; ~0 tokens (no lock given" in comment.stdout

    fake.responder = model
    first = cli.json("run", "brief.yaml")
    assert first["status"] == "completed"
    assert cli("lock", "brief.yaml").exit_code == 0
    git(repo, "add", "brief.yaml.lock")
    git(repo, "commit", "-qm", "lock")
    assert cli("lock", "--check", "brief.yaml").exit_code == 0

    text = (repo / "brief.yaml").read_text()
    changed_text = text.replace("Three facts about", "Four facts about")
    assert changed_text != text
    (repo / "brief.yaml").write_text(changed_text)
    assert "Four facts" in git(repo, "diff")
    plan = json.loads(cli("plan", "brief.yaml", "--against", "brief.yaml.lock", "--json").stdout)
    assert plan["changed"] == {"facts": ["prompt"], "outline": ["upstream output (facts)"]}
    actions = {step: doc["action"] for step, doc in plan["steps"].items()}
    assert actions == {"facts": "run", "angles": "replay", "outline": "unknown"}
    comment = cli("plan", "brief.yaml", "--against", "brief.yaml.lock", "--format", "markdown")
    assert "| `facts` | prompt |\n| `outline` | upstream output (facts) |" in comment.stdout
    # facts (18 tokens) + outline's two items (34 each), as the lock recorded them
    assert "**Estimated cost:** 3 LLM calls; ~86 tokens (from the lock's recorded usage)" in (
        comment.stdout
    )
    assert cli("lock", "--check", "brief.yaml").exit_code == 1

    sent = len(fake.requests)
    second = cli.json("run", "brief.yaml")
    assert len(fake.requests) == sent + 3  # exactly facts and outline's two items
    assert cli("lock", "brief.yaml").exit_code == 0
    git(repo, "commit", "-qam", "four facts")
    assert cli("bundle", "export", "brief.yaml", "-o", "replay.jsonl.gz").exit_code == 0

    monkeypatch.setenv("STEPCHAIN_HOME", str(tmp_path / "ci-home"))  # a fresh machine
    monkeypatch.delenv("OPENAI_API_KEY")
    assert cli("run", "brief.yaml", "--offline").exit_code == 2
    assert cli("bundle", "import", "replay.jsonl.gz", "--pipeline", "brief.yaml").exit_code == 0
    sent = len(fake.requests)
    replayed = cli.json("run", "brief.yaml", "--offline")
    assert len(fake.requests) == sent  # zero requests
    assert replayed["outputs"] == second["outputs"]
    assert {s: d["output"] for s, d in replayed["steps"].items()} == {
        s: d["output"] for s, d in second["steps"].items()
    }
    assert cli("lock", "--check", "brief.yaml").exit_code == 0  # the lock holds on CI too
