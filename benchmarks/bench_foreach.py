"""A `foreach` of 10,000 items over one template: cold throughput, then replay in a new process.

    python benchmarks/bench_foreach.py [--items 10000] [--max-concurrent 8]

1. Cold: `Executor(max_concurrent=N).execute(pipeline, run_id=...)` in this (fresh) process with
   a fresh STEPCHAIN_HOME; loading the pipeline is timed apart. Target: >= 5,000 items/s.
2. Replay: `stepchain run FILE --json` as a new process against the same home: every item comes
   from the cache. Wall time of the whole command (interpreter start-up included), best of 3.
   Target: < 2 s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, arguments, best_of, env_with, fresh_home, stepchain_cmd, work_dir

PIPELINE = """\
version: 1
name: bench-foreach
description: One template rendered for every item of a long list.
inputs:
  n: {type: integer, default: 10000, minimum: 0}
steps:
  - id: fan
    foreach: range(inputs.n) | list
    template: "Item {{ item }} of {{ inputs.n }} (index {{ index }}): code {{ (item * 7919) % 10007 }}"
outputs:
  count: "{{ steps.fan.output | length }}"
"""


def main() -> None:
    args = arguments(__doc__, items=10_000, max_concurrent=8)
    report = Report(
        f"foreach of {args.items:,} items over one template",
        "cold run through the API in a fresh process; replay as a new `stepchain run` "
        "process on the same STEPCHAIN_HOME",
    )
    path = work_dir("foreach") / "foreach.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    home = fresh_home()
    os.environ["STEPCHAIN_HOME"] = str(home)

    from stepchain import Executor, load_pipeline

    t0 = time.perf_counter()
    pipe = load_pipeline(path)
    t1 = time.perf_counter()
    result = Executor(max_concurrent=args.max_concurrent).run(
        pipe, run_id="bench-foreach-cold", inputs={"n": args.items}
    )
    cold = time.perf_counter() - t1
    fan = result.steps["fan"]
    if result.status != "completed" or len(fan.output) != args.items:
        raise SystemExit(f"cold run: {result.status}, {fan.error}")
    rate = args.items / cold
    report.row(
        "cold run (API, fresh process)",
        f"{rate:,.0f} items/s ({cold:.2f} s)",
        "≥ 5,000 items/s",
        rate >= 5000,
    )
    report.note(f"load_pipeline {t1 - t0:.2f} s, not in the figure")

    argv = [*stepchain_cmd(), "run", str(path), "-i", f"n={args.items}", "--json"]
    replay, done = best_of(argv, 3, env=env_with(STEPCHAIN_HOME=str(home)))
    doc = json.loads(done.stdout) if done.returncode == 0 else {}
    step = doc.get("steps", {}).get("fan", {})
    if not step.get("cached") or len(step.get("output") or []) != args.items:
        report.row(
            "replay (`stepchain run`, new process)",
            f"FAILED (exit {done.returncode}, "
            f"cached={step.get('cached')}): {done.stderr.strip()[-300:]}",
            "< 2 s",
            False,
        )
    else:
        report.row(
            "replay (`stepchain run`, new process, whole command)",
            f"{replay:.2f} s, every item from the cache",
            "< 2 s",
            replay < 2,
        )
    floor, version = best_of([*stepchain_cmd(), "--version"], 3)
    report.note(
        f"start-up floor: `stepchain --version` takes {floor:.2f} s ({version.stdout.strip()})"
    )
    report.save(args.json)


if __name__ == "__main__":
    main()
