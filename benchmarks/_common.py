"""Small helpers shared by the benchmark scripts (standard library only).

Every script prints its figures and, with `--json FILE` (what run_all.py passes), writes them as
{"title", "rows": [{"measure", "value", "target", "verdict"}], "notes": [...]} for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "_work"  # git-ignored: generated pipelines, comparison venvs


def work_dir(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def fresh_home() -> Path:
    """An empty STEPCHAIN_HOME: cold cache, no run records."""
    return Path(tempfile.mkdtemp(prefix="stepchain-bench-"))


def stepchain_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("stepchain")
    return [str(exe)] if exe.exists() else [shutil.which("stepchain") or "stepchain"]


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPCHAIN_", "OPENAI_"))}
    env.update(extra)
    return env


def best_of(
    argv: list[str], repeat: int = 3, **kwargs
) -> tuple[float, subprocess.CompletedProcess]:
    """Best wall time of a whole command over `repeat` runs, and the last run's result."""
    times, done = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times), done


def tool_python(
    name: str, packages: list[str], python: str | None = None
) -> tuple[str | None, str]:
    """A venv under benchmarks/_work/venvs/NAME with `packages`: (its python, how) or (None, why).

    Made once and reused while the package list is the same; never touches the package's deps.
    """
    venv = WORK / "venvs" / name
    exe, marker = venv / "bin" / "python", venv / "bench-packages.txt"
    wanted = "\n".join(packages)
    if exe.exists() and marker.exists() and marker.read_text() == wanted:
        return str(exe), "reused"
    shutil.rmtree(venv, ignore_errors=True)
    start = time.perf_counter()
    try:
        subprocess.run(
            [python or sys.executable, "-m", "venv", str(venv)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pip = [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages]
        done = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"venv/pip failed: {exc}"
    if done.returncode != 0:
        tail = [ln for ln in done.stderr.splitlines() if "WARNING" not in ln][-2:]
        return None, f"pip install {' '.join(packages)} failed: {' / '.join(tail)}"
    marker.write_text(wanted)
    return str(exe), f"installed in {time.perf_counter() - start:.0f} s"


def find_python(version: str) -> str | None:
    """An interpreter for `version` (e.g. "3.12"): on PATH or under pyenv."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"), reverse=True)
    for exe in filter(None, candidates):  # a pyenv shim may exist and still fail
        if subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0:
            return str(exe)
    return None


class Report:
    """Rows of figures for one script: printed as they come, saved for RESULTS.md."""

    def __init__(self, title: str, description: str = "") -> None:
        self.title, self.description = title, description
        self.rows: list[dict[str, str]] = []
        self.notes: list[str] = []
        print(f"== {title}", flush=True)

    def row(self, measure: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("OK" if ok else "MISS")
        self.rows.append({"measure": measure, "value": value, "target": target, "verdict": verdict})
        extra = f"   (target {target}: {verdict})" if verdict else ""
        print(f"  {measure}: {value}{extra}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def save(self, path: str | None) -> None:
        if path:
            doc = {
                "title": self.title,
                "description": self.description,
                "rows": self.rows,
                "notes": self.notes,
            }
            Path(path).write_text(json.dumps(doc, indent=1), encoding="utf-8")


def arguments(doc: str, **options) -> argparse.Namespace:
    """--json FILE plus the script's own options (name=default)."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--json", help="write the figures here (run_all.py does)")
    for name, default in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser.parse_args()
