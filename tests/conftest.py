"""Shared fixtures: every test runs in its own temp home and working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from stepchain import settings as settings_module
from stepchain.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """STEPCHAIN_HOME and the working directory in a temp dir; no provider credentials."""
    home = tmp_path / "home"
    monkeypatch.setenv("STEPCHAIN_HOME", str(home))
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "STEPCHAIN_ALLOW_RUN",
        "STEPCHAIN_DASK_SCHEDULER",
        "STEPCHAIN_LIMITS",
        "STEPCHAIN_SETTINGS",
        "STEPCHAIN_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STEPCHAIN_DEBUG", "1")  # a bug surfaces as a traceback in tests
    monkeypatch.chdir(tmp_path)
    token = settings_module._configured.set(None)
    yield home
    settings_module._configured.reset(token)
    settings_module.reset_logging()  # setup_stepchain(log_level=...) lasts for the process


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a (dedented) file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


class Cli:
    """The real `stepchain` command, in-process (CliRunner) or as a subprocess."""

    def __init__(self) -> None:
        self.runner = CliRunner()
        self.spawned: list[subprocess.Popen] = []

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    def json(self, *args: str) -> dict:
        result = self(*args, "--json")
        return json.loads(result.stdout)

    def spawn(self, *args: str, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepchain.cli", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **kwargs.pop("env", {})},
            **kwargs,
        )
        self.spawned.append(proc)
        return proc

    def close(self) -> None:
        """End what a test left running and close its pipes (no ResourceWarning later)."""
        for proc in self.spawned:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def proc(self, *args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        p = self.spawn(*args, **kwargs)
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.fixture
def cli() -> Iterator[Cli]:
    runner = Cli()
    yield runner
    runner.close()


def calls(path: Path) -> list[str]:
    """Lines a test tool appended to its side-effect log."""
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def calls_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copies the test tools next to the test's pipelines and logs their calls here."""
    (tmp_path / "tools.py").write_text((REPO / "tests" / "pipelines" / "tools.py").read_text())
    log = tmp_path / "calls.log"
    monkeypatch.setenv("CALLS_LOG", str(log))
    sys.modules.pop("tools", None)  # each test imports its own copy
    return log
