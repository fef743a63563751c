"""Shared helpers for the StepChain benchmarks: pipeline generators, timing, RESULTS.md sections.

Nothing here is a test: the benchmarks print figures and record them, they never assert.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / "_work"  # git-ignored
RESULTS = BENCH_DIR / "RESULTS.md"


# -- working folders -------------------------------------------------------------------------
def work_dir(name: str) -> Path:
    """A fresh folder under benchmarks/_work/ for one benchmark's generated files."""
    path = WORK / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def fresh_home(prefix: str = "stepchain-bench-") -> Path:
    """An empty STEPCHAIN_HOME (cold cache, no run records) in the system temp folder."""
    return Path(tempfile.mkdtemp(prefix=prefix))


# -- the machine -----------------------------------------------------------------------------
def machine() -> dict[str, str]:
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = ["?"]
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import stepchain

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "engine", "schemas", "cli.py"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.split("\n")
        changed = sorted({line[3:] for line in dirty if line.strip()})
        code = head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
    except OSError:
        code = "?"
    return {
        "code": code or "?",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": nproc,
        "cpu": cpu or platform.processor() or "?",
        "python": platform.python_version(),
        "stepchain": getattr(stepchain, "__version__", "?"),
        "loadavg": " ".join(load),
    }


def machine_line(info: dict[str, str]) -> str:
    return (
        f"{info['date']} · nproc {info['nproc']} · {info['cpu']} · Python {info['python']} · "
        f"stepchain {info['stepchain']} ({info.get('code', '?')}) · load average at start {info['loadavg']}"
    )


# -- timing ----------------------------------------------------------------------------------
def stepchain_command() -> list[str]:
    """The installed console command (what a user types), else the module."""
    exe = shutil.which("stepchain")
    return [exe] if exe else [sys.executable, "-m", "stepchain.cli"]


def time_command(
    argv: Sequence[str],
    *,
    repeat: int = 3,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run a whole command `repeat` times; wall-clock seconds, best and median, last exit code."""
    times = []
    last: subprocess.CompletedProcess | None = None
    for _ in range(repeat):
        start = time.perf_counter()
        last = subprocess.run(
            list(argv), capture_output=True, text=True, env=env, cwd=cwd, check=False
        )
        times.append(time.perf_counter() - start)
    assert last is not None
    return {
        "times": times,
        "best": min(times),
        "median": statistics.median(times),
        "rc": last.returncode,
        "stdout": last.stdout,
        "stderr": last.stderr,
    }


def env_with_home(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["STEPCHAIN_HOME"] = str(home)
    env.pop("STEPCHAIN_ALLOW_RUN", None)
    env.update(extra)
    return env


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def clear_engine_caches() -> int:
    """Clear every functools cache in the loaded stepchain modules (compiled templates, parsed
    references, schema validators...), so an in-process measurement starts as a fresh process would.
    Returns how many caches were cleared."""
    cleared = 0
    for name, module in list(sys.modules.items()):
        if not (name == "stepchain" or name.startswith("stepchain.")) or module is None:
            continue
        for value in list(vars(module).values()):
            clear = getattr(value, "cache_clear", None)
            if callable(clear) and getattr(value, "__module__", None) == name:
                clear()
                cleared += 1
    return cleared


# -- profiling -------------------------------------------------------------------------------
def profile_cumulative(func: Callable[[], Any], *, top: int = 30) -> tuple[Any, str, str]:
    """Both views of one profiled call: by own time and by cumulative time."""
    profiler = cProfile.Profile()
    result = None
    with contextlib.suppress(SystemExit):  # click commands exit
        result = profiler.runcall(func)
    texts = []
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
        texts.append(_trim_pstats(_shorten_paths(out.getvalue())))
    return result, texts[0], texts[1]


def _shorten_paths(text: str) -> str:
    text = text.replace(str(REPO) + "/", "")
    return re.sub(r"/\S*/site-packages/", "", re.sub(r"/\S*/lib/python3\.\d+/", "", text))


def _trim_pstats(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("ncalls"):
            head = [line for line in lines[:i] if "function calls" in line]
            return "\n".join(head + lines[i:]).rstrip()
    return text.rstrip()


# -- RESULTS.md ------------------------------------------------------------------------------
_RESULTS_HEADER = """# StepChain benchmark results

Written by the scripts in this folder (`python benchmarks/NAME.py`); each script replaces only its own
section. Figures are wall-clock seconds on the machine named in each section; how to read them is in
[README.md](README.md).
"""


def update_results(section: str, body: str) -> None:
    """Replace (or append) the section `section` of RESULTS.md, between its markers."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else _RESULTS_HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- pipeline generators ---------------------------------------------------------------------
def q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def layered_ids(n_steps: int, width: int) -> list[list[str]]:
    layers, made = [], 0
    layer = 0
    while made < n_steps:
        count = min(width, n_steps - made)
        layers.append([f"s{layer}_{i}" for i in range(count)])
        made += count
        layer += 1
    return layers


_OPS = ("+", "-", "*", "//")


def distinct_expr(base: str, number: int, digits: int = 7) -> str:
    """`base` wrapped in arithmetic whose shape spells `number` in base 4, e.g.
    ((((x + 1) * 3) - 2) // 1): step numbers below 4**digits give structurally different
    expressions, not just different constants."""
    expr = base
    for _ in range(digits):
        number, digit = divmod(number, 4)
        expr = f"({expr} {_OPS[digit]} {digit + 1})"
    return expr


def template_pipeline(
    n_steps: int,
    width: int,
    *,
    name: str = "bench",
    seed: int = 7,
    distinct: bool = False,
    foreach_every: int = 9,
    when_every: int = 11,
    native_every: int = 13,
    block_every: int = 17,
) -> tuple[str, dict[str, Any]]:
    """A wide-and-deep pipeline of template steps; returns (YAML text, shape facts).

    Layer k has `width` steps `s{k}_{i}`. Every step of layer k >= 1 references one step of layer
    k-1 (so the graph is as deep as it has layers) and 0-2 more steps of random earlier layers,
    through `{{ steps.X.output }}` (sliced, so outputs stay small). Some steps have a `when`, some
    are a `foreach` over a 3-item input list, some are a single `{{ expr }}` (a native list), some
    are block scalars with a `{% for %}` loop. All `when`s are true, so every step runs.

    With `distinct=False` the templates are what a generator writes: a handful of shapes that
    differ only in step ids. With `distinct=True` every template and `when` also holds an
    arithmetic expression whose operators spell the step's number (see distinct_expr), so no two
    have the same structure, even with ids and constants abstracted away: the worst case for any
    cache of parsed or compiled templates, and closer to a hand-written pipeline.
    """
    rng = random.Random(seed)
    layers = layered_ids(n_steps, width)
    lines = [
        "# yaml-language-server: $schema=../../../schemas/pipeline.schema.json",
        f"# generated by benchmarks/_common.py: {n_steps} template steps, width {width}, "
        f"{len(layers)} layers, seed {seed}, {'distinct' if distinct else 'repetitive'} templates",
        "version: 1",
        f"name: {name}",
        "description: Generated benchmark pipeline (template steps, wide and deep).",
        "inputs:",
        "  label: {type: string, default: bench}",
        "  n: {type: integer, default: 3, minimum: 0}",
        "  colors: {type: array, items: {type: string}, default: [red, green, blue]}",
        "  enabled: {type: boolean, default: true}",
        "defaults:",
        "  retries: 0",
        "steps:",
    ]
    counter = 0
    edges = 0
    foreach_steps = when_steps = 0
    for k, layer in enumerate(layers):
        for sid in layer:
            counter += 1
            refs: list[str] = []
            if k > 0:
                refs.append(layers[k - 1][rng.randrange(len(layers[k - 1]))])
                for _ in range(rng.randint(0, 2)):
                    kk = rng.randrange(k)
                    other = layers[kk][rng.randrange(len(layers[kk]))]
                    if other not in refs:
                        refs.append(other)
            edges += len(refs)

            def shaped(expr: str, number: int = counter) -> str:
                return distinct_expr(expr, number) if distinct else expr

            lines.append(f"  - id: {sid}")
            if counter % when_every == 0:
                when_steps += 1
                check = f" and {shaped('inputs.n')} is number" if distinct else ""
                if refs and counter % 2 == 0:
                    lines.append(
                        f"    when: steps.{refs[0]}.status == 'completed' and inputs.n > 0{check}"
                    )
                else:
                    lines.append(f"    when: inputs.enabled and inputs.n > 0{check}")
            parts = [f"{{{{ (steps.{r}.output | string)[:16] }}}}" for r in refs]
            if counter % foreach_every == 0:
                foreach_steps += 1
                lines.append("    foreach: inputs.colors")
                body = f"{{{{ item }}}}#{{{{ {shaped('index')} }}}} {sid} " + " ".join(parts)
                lines.append(f"    template: {q(body)}")
            elif refs and counter % native_every == 0:
                extra = f", {shaped('inputs.n')}" if distinct else ""
                native = f"{{{{ ['{sid}', (steps.{refs[0]}.output | string)[:16]{extra}] }}}}"
                lines.append(f"    template: {q(native)}")
            elif counter % block_every == 0:
                lines.append("    template: |")
                lines.append(f"      {sid} for {{{{ inputs.label }}}}:")
                lines.append(
                    "      {% for r in [" + ", ".join(f"steps.{r}.output" for r in refs) + "] %}"
                )
                lines.append(
                    f"      - {{{{ (r | string)[:12] }}}} {{{{ {shaped('loop.index')} }}}}"
                )
                lines.append("      {% endfor %}")
            else:
                body = f"{sid} {{{{ inputs.label }}}} " + " ".join(parts)
                if refs:
                    length = f"(steps.{refs[-1]}.output | string | length)"
                    body += f" len={{{{ {shaped(length)} }}}}"
                elif distinct:
                    body += f"{{{{ {shaped('inputs.n')} }}}}"
                lines.append(f"    template: {q(body)}")
    last = layers[-1][0]
    lines += ["outputs:", f"  final: {q('{{ steps.' + last + '.output }}')}"]
    shape = {
        "steps": n_steps,
        "width": width,
        "layers": len(layers),
        "edges": edges,
        "foreach_steps": foreach_steps,
        "when_steps": when_steps,
        "templates": "distinct" if distinct else "repetitive",
    }
    return "\n".join(lines) + "\n", shape
