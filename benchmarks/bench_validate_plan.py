"""Benchmark: `stepchain validate` and `stepchain plan` on a generated 10,000-step pipeline.

    python benchmarks/bench_validate_plan.py [--steps 10000] [--width 100] [--repeat 3]

Both are timed as whole commands (a subprocess each, interpreter start-up and imports included),
best and median of --repeat runs. Target (issue 2): under 2 seconds each on a 2-core machine.
`plan` runs against a fresh, empty STEPCHAIN_HOME (cold cache), so every step plans as `run`.

Then, in this process, the time is split by stage (YAML, schema, semantic checks, building the
pipeline, planning, formatting); with --profile (or automatically when a target is missed) the
top functions by own time are printed and recorded too. Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
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
    stepchain_command,
    table,
    template_pipeline,
    time_command,
    update_results,
    verdict,
    work_dir,
)

TARGET_S = 2.0


def stage_breakdown(path: Path, home: Path) -> list[tuple[str, float]]:
    """Seconds spent in each stage of validate and plan, measured in this process.

    Uses engine internals (loader stages); if they have moved, returns what it could measure.
    """
    import os

    os.environ["STEPCHAIN_HOME"] = str(home)
    stages: list[tuple[str, float]] = []

    def timed(name: str, func: Any) -> Any:
        start = time.perf_counter()
        value = func()
        stages.append((name, time.perf_counter() - start))
        return value

    try:
        from stepchain.pipeline.checks import check_semantics
        from stepchain.pipeline.load import build_pipeline
        from stepchain.pipeline.schema import schema_problems
        from stepchain.pipeline.yaml_source import load_source
        from stepchain.run.plan import plan_pipeline
        from stepchain.ui.reporting import format_plan

        text = path.read_text(encoding="utf-8")
        source = timed(
            "YAML parse + positions (yaml_source.load_source)", lambda: load_source(str(path), text)
        )
        timed("JSON Schema (schema.schema_problems)", lambda: schema_problems(source))
        checked = timed(
            "semantic checks (validation.check_semantics)", lambda: check_semantics(source)
        )
        pipeline = timed(
            "build Pipeline (loader.build_pipeline)", lambda: build_pipeline(source, checked.deps)
        )
        pipeline.path = path
        plan = timed(
            "plan (planning.plan_pipeline, cold cache)", lambda: plan_pipeline(pipeline, {})
        )
        timed("format plan (reporting.format_plan)", lambda: format_plan(plan))
    except Exception as exc:  # internals changed: report, do not fail the benchmark
        stages.append((f"(breakdown stopped: {type(exc).__name__}: {exc})", 0.0))
    return stages


def profiles(path: Path, home: Path, top: int) -> dict[str, tuple[str, str]]:
    """cProfile of validate and plan, in process (the CLI entry point, as the command runs it)."""
    import os

    from stepchain.cli import main

    os.environ["STEPCHAIN_HOME"] = str(home)
    out: dict[str, tuple[str, str]] = {}
    for name, args in (("validate", ["validate", str(path)]), ("plan", ["plan", str(path)])):
        _reset_template_caches()
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            _, tot, cum = profile_cumulative(lambda a=args: main(a, standalone_mode=False), top=top)
        out[name] = (tot, cum)
    return out


def _reset_template_caches() -> None:
    clear_engine_caches()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=100, help="steps per layer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--variants",
        default="repetitive,distinct",
        help="template styles: repetitive (generator-like), distinct (no two alike)",
    )
    parser.add_argument("--profile", action="store_true", help="always profile (cProfile)")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--top", type=int, default=20, help="profile entries to show")
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    info = machine()
    print(f"machine: {machine_line(info)}")
    folder = work_dir("validate_plan")
    cmd = stepchain_command()
    home = fresh_home()
    env = env_with_home(home)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    stages: dict[str, list[tuple[str, float]]] = {}
    shapes: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    try:
        floor = time_command([*cmd, "--version"], repeat=args.repeat, env=env)
        print(f"start-up floor (stepchain --version): best {floor['best']:.2f}s")
        for variant in args.variants.split(","):
            text, shape = template_pipeline(
                args.steps, args.width, name="bench-validate-plan", distinct=variant == "distinct"
            )
            path = folder / f"pipeline-{variant}.yaml"
            path.write_text(text, encoding="utf-8")
            shape["mb"] = len(text) / 1e6
            shapes[variant], paths[variant] = shape, path
            print(
                f"\n[{variant} templates] {path} ({shape['mb']:.1f} MB, {text.count(chr(10)):,} lines): "
                f"{shape['steps']:,} template steps in {shape['layers']} layers of {shape['width']}, "
                f"{shape['edges']:,} references, {shape['foreach_steps']:,} foreach, "
                f"{shape['when_steps']:,} when"
            )
            for name in ("validate", "plan"):
                print(f"timing `stepchain {name}` x{args.repeat} ...", flush=True)
                timing = time_command([*cmd, name, str(path)], repeat=args.repeat, env=env)
                results[(variant, name)] = timing
                tail = (timing["stdout"].strip().splitlines() or [""])[-1]
                print(
                    f"  {name:<8} best {timing['best']:6.2f}s  median {timing['median']:6.2f}s  "
                    f"runs {', '.join(f'{t:.2f}' for t in timing['times'])}  exit {timing['rc']}  "
                    f"target < {TARGET_S:g}s: {verdict(timing['best'] < TARGET_S)}"
                )
                if timing["rc"] != 0:
                    print(
                        "  (non-zero exit) stderr tail:\n    "
                        + "\n    ".join(timing["stderr"].splitlines()[-8:])
                    )
                elif tail:
                    print(f"  last line: {tail[:120]}")
            print("stage breakdown (in process, one pass):", flush=True)
            _reset_template_caches()
            stages[variant] = stage_breakdown(path, fresh_home())
            total = sum(t for _, t in stages[variant]) or 1.0
            for name, seconds in stages[variant]:
                print(f"  {seconds:7.2f}s  {100 * seconds / total:5.1f}%  {name}")

        missed = [v for (v, _), r in results.items() if r["best"] >= TARGET_S or r["rc"] != 0]
        prof = None
        if args.profile or (missed and not args.no_profile):
            variant = missed[-1] if missed else list(paths)[-1]
            print(
                f"\nprofiling the {variant} pipeline (cProfile, in process; profiling slows "
                "everything ~1.5-2x) ...",
                flush=True,
            )
            prof = (variant, profiles(paths[variant], fresh_home(), args.top))
            for name, (tot, _) in prof[1].items():
                print(f"\n--- {name}: top {args.top} by own time ---\n{tot}")
    finally:
        shutil.rmtree(home, ignore_errors=True)

    if args.no_record:
        return
    rows = [
        [
            f"`stepchain {name} FILE`",
            variant,
            f"{r['best']:.2f}",
            f"{r['median']:.2f}",
            ", ".join(f"{t:.2f}" for t in r["times"]),
            r["rc"],
            f"< {TARGET_S:g} s",
            verdict(r["best"] < TARGET_S and r["rc"] == 0),
        ]
        for (variant, name), r in results.items()
    ]
    rows.append(
        [
            "`stepchain --version` (start-up floor)",
            "",
            f"{floor['best']:.2f}",
            f"{floor['median']:.2f}",
            ", ".join(f"{t:.2f}" for t in floor["times"]),
            floor["rc"],
            "",
            "",
        ]
    )
    shape = next(iter(shapes.values()))
    body = [
        "## validate and plan on a 10,000-step pipeline (`bench_validate_plan.py`)",
        "",
        f"Machine: {machine_line(info)}",
        "",
        f"Pipeline: {shape['steps']:,} template steps, {shape['layers']} layers of {shape['width']}, "
        f"{shape['edges']:,} `steps.X.output` references, {shape['foreach_steps']:,} foreach steps, "
        f"{shape['when_steps']:,} `when`s; {shape['mb']:.1f} MB of YAML. Two template styles: "
        "*repetitive* (a few shapes differing only in step ids, as a generator writes them) and "
        "*distinct* (every template holds arithmetic spelling its step number, so no two share a "
        "structure). "
        f"Whole commands, wall-clock seconds, {args.repeat} runs each; `plan` with a cold cache.",
        "",
        table(
            ["command", "templates", "best s", "median s", "runs s", "exit", "target", "verdict"],
            rows,
        ),
        "",
        "Where the time goes (in process, one pass each, seconds):",
        "",
    ]
    names = [n for n, _ in next(iter(stages.values()))]
    stage_rows = []
    for i, name in enumerate(names):
        row = [name]
        for variant in stages:
            values = stages[variant]
            row.append(f"{values[i][1]:.2f}" if i < len(values) else "")
        stage_rows.append(row)
    body.append(table(["stage", *stages], stage_rows))
    if prof:
        variant, texts = prof
        for name, (tot, cum) in texts.items():
            body += [
                "",
                f"<details><summary>cProfile of <code>stepchain {name}</code> on the {variant} "
                f"pipeline (top {args.top} by own time, then cumulative)</summary>",
                "",
                "```",
                tot,
                "",
                cum,
                "```",
                "</details>",
            ]
    update_results("validate-plan", "\n".join(body))
    print(f"\nrecorded in {Path(__file__).resolve().parent / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
