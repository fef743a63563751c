"""Run every benchmark script and write benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--only overhead,foreach,llm,validate_plan,dask,report,gitops,rate_limits] [--no-write]

Each script runs in its own fresh process (`python benchmarks/bench_NAME.py --json FILE`), so
"first run in a fresh process" means what it says; its figures are printed as they come and
gathered into RESULTS.md with the machine, the date, the command and target vs measured.
Comparison tools are installed on first use into venvs under benchmarks/_work/ (git-ignored);
that set-up time is reported apart from the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ["validate_plan", "foreach", "overhead", "llm", "dask", "report", "gitops", "rate_limits"]


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor() or "?",
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    head = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
        ).stdout.strip()
        or "?"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "engine", "cli.py", "schemas"],
        capture_output=True,
        text=True,
        cwd=BENCH,
    ).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; StepChain at commit {head}"
        f"{' (engine/ has uncommitted changes)' if dirty else ''}; load average at start {load}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated script names (default: all)")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else SCRIPTS
    info, start = machine(), time.perf_counter()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            t0 = time.perf_counter()
            try:
                done = subprocess.run(
                    [sys.executable, str(BENCH / f"bench_{name}.py"), "--json", str(out)],
                    timeout=900,
                )
                code = done.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            took = time.perf_counter() - t0
            if out.exists():
                sections.append((json.loads(out.read_text()), took))
            else:
                failures.append(f"`bench_{name}.py` failed (exit {code}) after {took:.0f} s")
    wall = time.perf_counter() - start
    command = "python benchmarks/run_all.py" + (f" --only {args.only}" if args.only else "")
    text = render(sections, failures, info, date, command, wall)
    print(f"\nwhole run: {wall:.0f} s")
    if not args.no_write:
        (BENCH / "RESULTS.md").write_text(text, encoding="utf-8")
        print(f"wrote {BENCH / 'RESULTS.md'}")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(sections, failures, info, date, command, wall) -> str:
    lines = [
        "# StepChain benchmark results",
        "",
        f"- **Command:** `{command}` (from the repository root; whole run {wall:.0f} s, "
        "including any first-time installs of the comparison tools)",
        f"- **Date:** {date}",
        f"- **Machine:** {info}",
        "- How each figure is measured: [README.md](README.md) and each script's docstring.",
        "",
        "## Targets",
        "",
        "| benchmark | measure | measured | target | verdict |",
        "|---|---|---|---|---|",
    ]
    for doc, _ in sections:
        for row in doc["rows"]:
            if row["target"]:
                verdict = {"OK": "OK", "MISS": "**MISS**"}.get(row["verdict"], "—")
                lines.append(
                    f"| {cell(doc['title'])} | {cell(row['measure'])} | {cell(row['value'])} | "
                    f"{cell(row['target'])} | {verdict} |"
                )
    lines += [f"- {f}" for f in failures]
    for doc, took in sections:
        lines += [
            "",
            f"## {doc['title']}",
            "",
            f"{doc['description']} ({took:.0f} s)",
            "",
            "| measure | measured | target | verdict |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {cell(r['measure'])} | {cell(r['value'])} | {cell(r['target'])} | "
            f"{'**MISS**' if r['verdict'] == 'MISS' else r['verdict']} |"
            for r in doc["rows"]
        ]
        if doc["notes"]:
            lines += [""] + [f"- {note}" for note in doc["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
