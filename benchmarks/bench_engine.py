"""Benchmark: engine overhead, cached replay and makespan of `Executor().run(...)`.

    python benchmarks/bench_engine.py [--steps 2000] [--width 40] [--repeat 3]
                                      [--parts overhead,command,makespan] [--concurrency 4,8,16]

Targets (issue 3), on this 2-core machine:
  (a) overhead: a 2,000-step pipeline of template steps (wide and deep), cold cache (a fresh
      STEPCHAIN_HOME): at least 2,000 steps per second of engine time;
  (b) replay: the same pipeline again, every step a cache hit: under 1 second of engine time;
  (c) makespan: DAGs of tool steps that each sleep 100 ms, run with --max-concurrent N: within 5% of
      the ideal bound max(critical path, total work / N).

Engine time is the wall-clock time of `Executor(max_concurrent=8).run(pipeline, run_id=..., inputs=...)`
alone, measured in a fresh Python process (a worker subprocess of this script) so that nothing is
warm that a real `stepchain run` would not have warm; import and `load_pipeline` (validation) are
reported beside it. The replay is measured twice: in a new process (what a second `stepchain run`
does) and in the same process right after the cold run (in-process caches warm). The whole
commands `stepchain run FILE` (cold, then replay) are timed too. Makespan runs in this process.
Nothing here asserts anything: figures are printed and recorded in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    clear_engine_caches,
    env_with_home,
    fresh_home,
    machine,
    machine_line,
    profile_cumulative,
    q,
    stepchain_command,
    table,
    template_pipeline,
    time_command,
    update_results,
    verdict,
    work_dir,
)

STEPS_PER_S_TARGET = 2000.0
REPLAY_TARGET_S = 1.0
MAKESPAN_TOLERANCE = 0.05
DEFAULT_POOL = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's default pool size


# -- worker: one fresh process that loads the pipeline and runs it one or more times --------
def worker(path: str, run_ids: list[str], max_concurrent: int, prewarm: bool = False) -> None:
    start = time.perf_counter()
    from stepchain import Executor, load_pipeline

    imported = time.perf_counter()
    pipeline = load_pipeline(path)
    loaded = time.perf_counter()
    if prewarm:  # one run in a throwaway home: in-process template caches warm, the real home cold
        home = os.environ["STEPCHAIN_HOME"]
        scratch = fresh_home()
        os.environ["STEPCHAIN_HOME"] = str(scratch)
        Executor(max_concurrent=max_concurrent).run(pipeline, run_id="prewarm", inputs={})
        os.environ["STEPCHAIN_HOME"] = home
        shutil.rmtree(scratch, ignore_errors=True)
    runs = []
    for run_id in run_ids:
        t0 = time.perf_counter()
        result = Executor(max_concurrent=max_concurrent).run(pipeline, run_id=run_id, inputs={})
        engine_s = time.perf_counter() - t0
        statuses: dict[str, int] = {}
        for r in result.steps.values():
            statuses[r.status] = statuses.get(r.status, 0) + 1
        runs.append(
            {
                "run_id": run_id,
                "status": result.status,
                "engine_s": engine_s,
                "steps": len(result.steps),
                "statuses": statuses,
                "cached": sum(1 for r in result.steps.values() if r.cached),
                "executed": sum(1 for r in result.steps.values() if r.attempts > 0),
            }
        )
    print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "runs": runs}))


def spawn_worker(
    path: Path, home: Path, run_ids: list[str], max_concurrent: int = 8, prewarm: bool = False
) -> dict:
    argv = [
        sys.executable,
        __file__,
        "--worker",
        str(path),
        "--max-concurrent",
        str(max_concurrent),
    ]
    argv += ["--prewarm"] * prewarm + run_ids
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env_with_home(home), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- (a) + (b): overhead and replay ------------------------------------------------------------
def bench_overhead(path: Path, n_steps: int, repeat: int) -> dict[str, Any]:
    cold, warm_replay, replay, loads, imports, details, prewarmed = [], [], [], [], [], [], []
    for rep in range(repeat):
        home, other = fresh_home(), fresh_home()
        try:
            first = spawn_worker(path, home, ["cold", "replay-same-process"])
            second = spawn_worker(path, home, ["replay-new-process"])
            third = spawn_worker(path, other, ["cold-templates-prewarmed"], prewarm=True)
        finally:
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(other, ignore_errors=True)
        prewarmed.append(third["runs"][0]["engine_s"])
        c, w = first["runs"]
        r = second["runs"][0]
        cold.append(c["engine_s"])
        warm_replay.append(w["engine_s"])
        replay.append(r["engine_s"])
        loads += [first["load_s"], second["load_s"]]
        imports += [first["import_s"], second["import_s"]]
        details.append((c, w, r))
        print(
            f"  rep {rep + 1}: cold {c['engine_s']:.2f}s ({n_steps / c['engine_s']:.0f} steps/s, "
            f"{c['status']}, executed {c['executed']}, cache hits {c['cached']}) | replay new process "
            f"{r['engine_s']:.2f}s ({r['status']}, hits {r['cached']}/{r['steps']}, executed {r['executed']}) | "
            f"replay same process {w['engine_s']:.2f}s | cold, templates pre-compiled {prewarmed[-1]:.2f}s | "
            f"load_pipeline {first['load_s']:.2f}s",
            flush=True,
        )
    return {
        "cold": cold,
        "replay": replay,
        "warm_replay": warm_replay,
        "prewarmed": prewarmed,
        "load": loads,
        "import": imports,
        "details": details,
    }


def bench_commands(path: Path, repeat: int) -> dict[str, Any]:
    cmd = stepchain_command()
    cold, replay, rcs = [], [], []
    for rep in range(repeat):
        home = fresh_home()
        env = env_with_home(home)
        try:
            a = time_command([*cmd, "run", str(path), "--run-id", "cold"], repeat=1, env=env)
            b = time_command([*cmd, "run", str(path), "--run-id", "replay"], repeat=1, env=env)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        cold.append(a["best"])
        replay.append(b["best"])
        rcs.append((a["rc"], b["rc"]))
        if a["rc"] or b["rc"]:
            print(
                "  non-zero exit; stderr tail:\n    "
                + "\n    ".join((a["stderr"] + b["stderr"]).splitlines()[-8:])
            )
        print(
            f"  rep {rep + 1}: `stepchain run` cold {a['best']:.2f}s (exit {a['rc']}), replay {b['best']:.2f}s (exit {b['rc']})",
            flush=True,
        )
    return {"cold": cold, "replay": replay, "rcs": rcs}


# -- (c): makespan -----------------------------------------------------------------------------
NAPS = '''"""Function tools for the makespan benchmark: wait a fixed time, say which step ran."""

import asyncio
import time


def nap(step: str, after: list | None = None, seconds: float = 0.1) -> dict:
    """Sleep in a thread (the engine runs a sync tool off the event loop)."""
    time.sleep(seconds)
    return {"step": step}


async def anap(step: str, after: list | None = None, seconds: float = 0.1) -> dict:
    """Sleep on the event loop (an async tool needs no thread)."""
    await asyncio.sleep(seconds)
    return {"step": step}
'''


def dag_spine(chain: int = 20, sides: int = 3) -> dict[str, list[str]]:
    """Critical-path bound: a chain c0..c{n-1}; each c_i (but the last) has `sides` leaf-like side
    steps, and c_{i+2} also waits for the side steps of c_i (fan-in)."""
    deps: dict[str, list[str]] = {}
    for i in range(chain):
        needs = [f"c{i - 1}"] if i else []
        if i >= 2:
            needs += [f"x{i - 2}_{j}" for j in range(sides)]
        deps[f"c{i}"] = needs
        if i < chain - 1:
            for j in range(sides):
                deps[f"x{i}_{j}"] = [f"c{i}"]
    return deps


def dag_wide(
    layers: int = 5, width: int = 32, fan_in: int = 2, seed: int = 3
) -> dict[str, list[str]]:
    """Work bound: `layers` layers of `width` steps, each waiting for `fan_in` of the layer before."""
    rng = random.Random(seed)
    deps: dict[str, list[str]] = {}
    for k in range(layers):
        for i in range(width):
            deps[f"w{k}_{i}"] = (
                sorted({f"w{k - 1}_{rng.randrange(width)}" for _ in range(fan_in)}) if k else []
            )
    return deps


def dag_facts(deps: dict[str, list[str]]) -> tuple[int, int]:
    """(steps on the critical path, total steps) for a DAG given in topological order."""
    depth: dict[str, int] = {}
    for sid, needs in deps.items():
        depth[sid] = 1 + max((depth[n] for n in needs), default=0)
    return max(depth.values()), len(deps)


def simulate_greedy(
    deps: dict[str, list[str]], slots: int, duration: float, *, critical_first: bool = False
) -> float:
    """Makespan of an ideal zero-overhead list scheduler with `slots` slots.

    FIFO starts ready steps in the order they became ready (what a dependency-driven scheduler
    does); critical_first starts the ready steps with the longest path still ahead of them first.
    """
    order = {s: i for i, s in enumerate(deps)}
    dependents: dict[str, list[str]] = {s: [] for s in deps}
    for s, needs in deps.items():
        for n in needs:
            dependents[n].append(s)
    ahead: dict[str, int] = {}
    for s in reversed(list(deps)):
        ahead[s] = 1 + max((ahead[d] for d in dependents[s]), default=0)
    remaining = {s: set(n) for s, n in deps.items()}
    ready = [s for s in deps if not remaining[s]]
    running: list[tuple[float, str]] = []
    clock, finished = 0.0, 0
    while finished < len(deps):
        if critical_first:
            ready.sort(key=lambda s: (-ahead[s], order[s]))
        while ready and len(running) < slots:
            running.append((clock + duration, ready.pop(0)))
        running.sort()
        end = running[0][0]
        clock = end
        done = [s for t, s in running if t <= end + 1e-9]
        running = [(t, s) for t, s in running if t > end + 1e-9]
        for s in done:
            finished += 1
            for d in dependents[s]:
                remaining[d].discard(s)
                if not remaining[d]:
                    ready.append(d)
    return clock


def makespan_pipeline(name: str, deps: dict[str, list[str]], function: str, nap_s: float) -> str:
    """Tool steps; dependencies half through templates (`after:`), half through `needs:`."""
    lines = [
        "version: 1",
        f"name: {name}",
        "description: Generated makespan benchmark (tool steps that sleep).",
        "defaults: {cache: false, retries: 0, timeout: 60}",
        "tools:",
        f"  nap: {{type: function, function: {q(function)}}}",
        "steps:",
    ]
    for sid, needs in deps.items():
        lines += [f"  - id: {sid}", "    tool: nap"]
        via_template, via_needs = (
            needs[: len(needs) // 2 + len(needs) % 2],
            needs[len(needs) // 2 + len(needs) % 2 :],
        )
        after = "{{ [" + ", ".join(f"steps.{n}.output.step" for n in via_template) + "] }}"
        lines.append(f"    with: {{step: {sid}, seconds: {nap_s}, after: {q(after)}}}")
        if via_needs:
            lines.append(f"    needs: [{', '.join(via_needs)}]")
    return "\n".join(lines) + "\n"


def _makespan_run(pipeline: Any, n: int, *, cold: bool) -> tuple[float, float, str]:
    """One run in a fresh home: (first step start -> last step end, run() wall time, status)."""
    from stepchain import Executor

    if cold:
        _clear_template_caches()  # as in a fresh `stepchain run` process
    home = fresh_home()
    os.environ["STEPCHAIN_HOME"] = str(home)
    try:
        t0 = time.perf_counter()
        result = Executor(max_concurrent=n).run(pipeline, run_id=f"mk-{n}", inputs={})
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(home, ignore_errors=True)
    steps = list(result.steps.values())
    starts = [r.started_at for r in steps if r.started_at]
    ends = [r.completed_at for r in steps if r.completed_at]
    return (max(ends) - min(starts)).total_seconds(), wall, result.status


def bench_makespan(
    folder: Path, concurrency: list[int], repeat: int, nap_s: float
) -> list[dict[str, Any]]:
    from stepchain import load_pipeline

    (folder / "naps.py").write_text(NAPS, encoding="utf-8")
    rows = []
    for dag_name, deps in (("spine", dag_spine()), ("wide", dag_wide())):
        cp, work = dag_facts(deps)
        for tool, function in (("sync def (thread)", "naps:nap"), ("async def", "naps:anap")):
            threaded = function.endswith(":nap")
            path = folder / f"{dag_name}-{function.split(':')[1]}.yaml"
            path.write_text(
                makespan_pipeline(f"makespan-{dag_name}", deps, function, nap_s), encoding="utf-8"
            )
            pipeline = load_pipeline(path)
            for n in concurrency:
                ideal = max(cp * nap_s, work * nap_s / n)
                greedy = simulate_greedy(deps, n, nap_s)
                best_first = simulate_greedy(deps, n, nap_s, critical_first=True)
                capped = simulate_greedy(deps, min(n, DEFAULT_POOL), nap_s) if threaded else greedy
                cold = [_makespan_run(pipeline, n, cold=True) for _ in range(repeat)]
                warm = [_makespan_run(pipeline, n, cold=False) for _ in range(repeat)]
                span = min(c[0] for c in cold)
                row = {
                    "dag": dag_name,
                    "tool": tool,
                    "threaded": threaded,
                    "n": n,
                    "steps": work,
                    "cp": cp,
                    "ideal": ideal,
                    "greedy": greedy,
                    "critical_first": best_first,
                    "capped": capped,
                    "span": span,
                    "spans": [c[0] for c in cold],
                    "wall": min(c[1] for c in cold),
                    "warm": min(w[0] for w in warm),
                    "over": span / ideal - 1,
                    "warm_over": min(w[0] for w in warm) / ideal - 1,
                    "status": ",".join(sorted({c[2] for c in cold + warm})),
                }
                rows.append(row)
                print(
                    f"  {dag_name:<5} {tool:<17} N={n:<2}  ideal {ideal:5.2f}s  measured "
                    f"{span:5.2f}s {100 * row['over']:+6.1f}% [{verdict(row['over'] <= MAKESPAN_TOLERANCE)}]"
                    f"  run() {row['wall']:.2f}s  templates warm {row['warm']:.2f}s "
                    f"{100 * row['warm_over']:+.1f}%"
                    + (
                        f"  (FIFO greedy {greedy:.2f}s, critical-path-first {best_first:.2f}s)"
                        if greedy > ideal + 1e-9
                        else ""
                    )
                    + (
                        f"  (with {DEFAULT_POOL} threads: {capped:.2f}s)"
                        if capped > greedy + 1e-9
                        else ""
                    )
                    + ("" if row["status"] == "completed" else f"  status {row['status']}"),
                    flush=True,
                )
    return rows


# -- profiling ---------------------------------------------------------------------------------
def profile_runs(path: Path, top: int) -> dict[str, tuple[str, str]]:
    """cProfile of a cold run and of a replay, in this process, template caches cleared first."""
    from stepchain import Executor, load_pipeline

    out = {}
    home = fresh_home()
    os.environ["STEPCHAIN_HOME"] = str(home)
    try:
        _clear_template_caches()
        pipeline = load_pipeline(path)
        _clear_template_caches()  # a cold process compiles every template once during the run
        _, tot, cum = profile_cumulative(
            lambda: Executor(max_concurrent=8).run(pipeline, run_id="prof-cold", inputs={}), top=top
        )
        out["cold run"] = (tot, cum)
        _clear_template_caches()
        _, tot, cum = profile_cumulative(
            lambda: Executor(max_concurrent=8).run(pipeline, run_id="prof-replay", inputs={}),
            top=top,
        )
        out["replay (fresh template caches)"] = (tot, cum)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out


def _clear_template_caches() -> None:
    clear_engine_caches()


# -- main --------------------------------------------------------------------------------------
def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--width", type=int, default=40, help="steps per layer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="overhead,command,makespan")
    parser.add_argument(
        "--variants",
        default="repetitive,distinct",
        help="template styles for overhead/replay: repetitive (generator-like), distinct",
    )
    parser.add_argument("--concurrency", default="4,8,16", help="makespan --max-concurrent values")
    parser.add_argument("--nap", type=float, default=0.1, help="seconds each makespan step sleeps")
    parser.add_argument("--profile", action="store_true", help="always profile (cProfile)")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--max-concurrent", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--prewarm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("run_ids", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.run_ids, args.max_concurrent, args.prewarm)
        return

    parts = set(args.parts.split(","))
    variants = args.variants.split(",")
    info = machine()
    print(f"machine: {machine_line(info)}")
    print(f"(asyncio.to_thread's default pool here: min(32, cpu + 4) = {DEFAULT_POOL} threads)")
    folder = work_dir("engine")
    paths: dict[str, Path] = {}
    shape: dict[str, Any] = {}
    for variant in variants:
        text, shape = template_pipeline(
            args.steps, args.width, name="bench-engine", distinct=variant == "distinct"
        )
        paths[variant] = folder / f"pipeline-{variant}.yaml"
        paths[variant].write_text(text, encoding="utf-8")
    renders = shape["steps"] + 2 * shape["foreach_steps"]  # a foreach over 3 items renders 3 times
    print(
        f"pipelines: {', '.join(str(p) for p in paths.values())}: {shape['steps']:,} template steps "
        f"in {shape['layers']} layers of {shape['width']}, {shape['edges']:,} references, "
        f"{shape['foreach_steps']} foreach (x3 items), {shape['when_steps']} when; {renders:,} renders"
    )
    sections = [
        "## Engine: overhead, replay, makespan (`bench_engine.py`)",
        "",
        f"Machine: {machine_line(info)}",
        "",
    ]
    missed: list[str] = []

    if "overhead" in parts:
        rows = []
        for variant, path in paths.items():
            print(
                f"(a)+(b) [{variant} templates] engine time of Executor(max_concurrent=8).run(), "
                f"fresh processes, x{args.repeat}:"
            )
            o = bench_overhead(path, args.steps, args.repeat)
            rate_best = args.steps / min(o["cold"])
            rate_median = args.steps / statistics.median(o["cold"])
            if rate_best < STEPS_PER_S_TARGET or min(o["replay"]) >= REPLAY_TARGET_S:
                missed.append(variant)
            print(
                f"  overhead: best {min(o['cold']):.2f}s = {rate_best:.0f} steps/s "
                f"(median {rate_median:.0f}); target >= {STEPS_PER_S_TARGET:.0f}: "
                f"{verdict(rate_best >= STEPS_PER_S_TARGET)}"
            )
            print(
                f"  replay (new process): best {min(o['replay']):.2f}s, median "
                f"{statistics.median(o['replay']):.2f}s; target < {REPLAY_TARGET_S:g}s: "
                f"{verdict(min(o['replay']) < REPLAY_TARGET_S)}"
            )
            print(f"  replay (same process, caches warm): best {min(o['warm_replay']):.2f}s")
            print(
                f"  cold run with templates already compiled (diagnostic): best "
                f"{min(o['prewarmed']):.2f}s = {args.steps / min(o['prewarmed']):.0f} steps/s"
            )
            c, _, r = o["details"][-1]
            rows += [
                [
                    "cold run",
                    variant,
                    f"{min(o['cold']):.2f} s = **{rate_best:.0f} steps/s**",
                    f"{statistics.median(o['cold']):.2f} s = {rate_median:.0f} steps/s",
                    _fmt(o["cold"]),
                    f">= {STEPS_PER_S_TARGET:.0f} steps/s",
                    verdict(rate_best >= STEPS_PER_S_TARGET)
                    + f" ({c['status']}, {c['executed']} executed, {c['cached']} hits)",
                ],
                [
                    "replay in a new process (as a 2nd `stepchain run`)",
                    variant,
                    f"**{min(o['replay']):.2f} s**",
                    f"{statistics.median(o['replay']):.2f} s",
                    _fmt(o["replay"]),
                    f"< {REPLAY_TARGET_S:g} s",
                    verdict(min(o["replay"]) < REPLAY_TARGET_S)
                    + f" ({r['status']}, {r['cached']}/{r['steps']} hits, {r['executed']} executed)",
                ],
                [
                    "replay in the same process (template caches warm)",
                    variant,
                    f"{min(o['warm_replay']):.2f} s",
                    f"{statistics.median(o['warm_replay']):.2f} s",
                    _fmt(o["warm_replay"]),
                    "(reference)",
                    "",
                ],
                [
                    "cold run, templates already compiled (diagnostic)",
                    variant,
                    f"{min(o['prewarmed']):.2f} s = {args.steps / min(o['prewarmed']):.0f} steps/s",
                    f"{statistics.median(o['prewarmed']):.2f} s",
                    _fmt(o["prewarmed"]),
                    "(reference)",
                    "",
                ],
                [
                    "`load_pipeline` (validation), per process",
                    variant,
                    f"{min(o['load']):.2f} s",
                    f"{statistics.median(o['load']):.2f} s",
                    _fmt(o["load"]),
                    "",
                    "",
                ],
                [
                    "`import stepchain`",
                    variant,
                    f"{min(o['import']):.2f} s",
                    f"{statistics.median(o['import']):.2f} s",
                    _fmt(o["import"]),
                    "",
                    "",
                ],
            ]
        sections += [
            f"### (a) overhead and (b) replay — {shape['steps']:,} template steps, "
            f"{shape['layers']} layers of {shape['width']}, {shape['edges']:,} references, "
            f"{shape['foreach_steps']} foreach over 3 items, {shape['when_steps']} `when`s",
            "",
            "Engine time = `Executor(max_concurrent=8).run(pipeline, run_id=..., inputs={})` alone, "
            f"in a fresh process with a fresh `STEPCHAIN_HOME`; {args.repeat} repetitions. "
            "Templates *repetitive*: a few shapes differing only in step ids (generator-like); "
            "*distinct*: no two templates share a structure. *Templates already compiled*: the same cold run "
            "after a first run in a throwaway home in the same process — what is left of the "
            "engine's time when compiling templates costs nothing.",
            "",
            table(
                ["measure", "templates", "best", "median", "runs (s)", "target", "verdict"], rows
            ),
            "",
        ]

    if "command" in parts:
        rows = []
        for variant, path in paths.items():
            print(
                f"[{variant} templates] whole command `stepchain run FILE` (cold, then replay), "
                f"x{args.repeat}:"
            )
            cmd = bench_commands(path, args.repeat)
            for label, key in (("(cold cache)", "cold"), ("again (replay)", "replay")):
                rows.append(
                    [
                        f"`stepchain run FILE` {label}",
                        variant,
                        f"{min(cmd[key]):.2f}",
                        f"{statistics.median(cmd[key]):.2f}",
                        _fmt(cmd[key]),
                        f"{args.steps / min(cmd[key]):.0f}",
                        ", ".join(str(rc[0 if key == "cold" else 1]) for rc in cmd["rcs"]),
                    ]
                )
        sections += [
            "Whole commands (wall clock: interpreter start-up, import, validation and the live "
            "table included):",
            "",
            table(
                ["command", "templates", "best s", "median s", "runs s", "steps/s (best)", "exit"],
                rows,
            ),
            "",
        ]

    if "makespan" in parts:
        concurrency = [int(n) for n in args.concurrency.split(",")]
        print(f"(c) makespan, tool steps sleeping {args.nap * 1000:.0f} ms, best of {args.repeat}:")
        (folder / "makespan").mkdir()
        rows = bench_makespan(folder / "makespan", concurrency, args.repeat, args.nap)
        spine_cp, spine_w = dag_facts(dag_spine())
        wide_cp, wide_w = dag_facts(dag_wide())
        sections += [
            f"### (c) makespan — tool steps that each sleep {args.nap * 1000:.0f} ms, `cache: false`, fresh home",
            "",
            f"- **spine** (critical-path bound): a chain of {spine_cp} steps, each with 3 side steps that the "
            f"chain step two further on waits for; {spine_w} steps, critical path {spine_cp} steps = {spine_cp * args.nap:.1f} s.",
            f"- **wide** (work bound): {wide_cp} layers of {wide_w // wide_cp} steps, each waiting for 2 random "
            f"steps of the layer before; {wide_w} steps, critical path {wide_cp} steps = {wide_cp * args.nap:.1f} s.",
            "",
            "Ideal = max(critical path, total work / N), a lower bound that no schedule may reach. "
            "The simulations are zero-overhead list schedulers with N slots: *FIFO* starts ready "
            "steps in the order they became ready (what a dependency-driven scheduler does), "
            "*critical-first* starts those with the longest path ahead first; "
            f"*FIFO, {DEFAULT_POOL} threads* is FIFO with min(N, {DEFAULT_POOL}) slots — what a sync "
            f"tool would get from asyncio.to_thread's default pool of min(32, cpu+4) = "
            f"{DEFAULT_POOL} threads on {os.cpu_count()} CPUs. *Measured* = "
            f"first step start to last step end, best of {args.repeat} runs, each in a fresh home "
            "with the in-process template caches cleared (as a fresh `stepchain run`); `run()` = "
            "the whole call; *templates warm* = best of the same runs with the templates already "
            "compiled by an earlier run in the process (the scheduler alone).",
            "",
            table(
                [
                    "DAG",
                    "tool",
                    "N",
                    "ideal s",
                    "greedy FIFO s",
                    "greedy critical-first s",
                    f"greedy FIFO, {DEFAULT_POOL} threads s",
                    "measured s",
                    "vs ideal",
                    "target ≤ +5%",
                    "`run()` s",
                    "templates warm s",
                ],
                [
                    [
                        r["dag"],
                        r["tool"],
                        r["n"],
                        f"{r['ideal']:.2f}",
                        f"{r['greedy']:.2f}",
                        f"{r['critical_first']:.2f}",
                        f"{r['capped']:.2f}" if r["threaded"] else "",
                        f"{r['span']:.2f}",
                        f"{100 * r['over']:+.1f}%",
                        verdict(r["over"] <= MAKESPAN_TOLERANCE)
                        + (
                            " (bound unreachable by list scheduling)"
                            if r["critical_first"] > r["ideal"] * (1 + MAKESPAN_TOLERANCE)
                            else ""
                        )
                        + ("" if r["status"] == "completed" else f" ({r['status']})"),
                        f"{r['wall']:.2f}",
                        f"{r['warm']:.2f} ({100 * r['warm_over']:+.1f}%)",
                    ]
                    for r in rows
                ],
            ),
            "",
        ]

    if args.profile or (missed and not args.no_profile):
        variant = missed[-1] if missed else variants[-1]
        print(
            f"profiling a cold run and a replay of the {variant} pipeline in process (cProfile) ...",
            flush=True,
        )
        prof = profile_runs(paths[variant], args.top)
        for name, (tot, _) in prof.items():
            print(f"\n--- {name}: top {args.top} by own time ---\n{tot}")
        for name, (tot, cum) in prof.items():
            sections += [
                f"<details><summary>cProfile of the {name}, {variant} templates "
                f"({shape['steps']:,} steps; top {args.top} by own time, then cumulative)</summary>",
                "",
                "```",
                tot,
                "",
                cum,
                "```",
                "</details>",
                "",
            ]

    if not args.no_record:
        update_results("engine", "\n".join(sections))
        print(f"\nrecorded in {Path(__file__).resolve().parent / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
