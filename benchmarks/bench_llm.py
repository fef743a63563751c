"""Benchmark: makespan of a DAG of LLM steps, StepChain against StepChain 0.3.1 from PyPI.

    python benchmarks/bench_llm.py [--repeat 3] [--layers 6] [--width 10] [--latency 0.2]
                                   [--concurrency 10] [--profile auto|always|never]
                                   [--old-venv DIR] [--skip-old] [--close-connections]
                                   [--no-write] [--keep]

The DAG: `--layers` x `--width` `prompt` steps; every step of layer k > 0 reads the output of 1-3
steps of layer k-1 (a fixed pseudo-random choice) through `{{ steps.X.output }}`. The test server
(`tests/support/fake_openai.py`, real HTTP on 127.0.0.1, in this process) answers every request
after a fixed `--latency`, with a text that names the step, so the benchmark can check that each
request carried the outputs of the steps it depends on. It keeps connections alive between
requests, as api.openai.com does (`--close-connections`: one request per connection, the test
server's default, which makes every request pay a TCP connect and a server thread).

- StepChain: the DAG as a version 1 pipeline YAML, `Executor(max_concurrent=N).run(...)` with a
  fresh STEPCHAIN_HOME (cold cache), in a fresh process (this script re-run with `--worker`).
  The worker imports `openai` before the timed call, as 0.3.1's `import stepchain` does
  (StepChain imports the SDK only when a run needs it); the import counts in "import s".
- StepChain 0.3.1 (needs Python 3.12): installed with pip into a venv in the temp folder; the same
  DAG as a `Plan` of `Step(id, prompt, dependencies)`, run by
  `asyncio.run(AsyncExecutor(max_concurrent=N).execute_plan(plan, run_id, resume=False))` in a
  fresh process (a driver script written to the temp folder). 0.3.1 puts the dependencies'
  outputs into the request itself ("Previous steps completed: - X: ..."). It runs each step's
  blocking OpenAI call in asyncio's default thread pool, which has min(32, cpu + 4) threads; a
  diagnostic row repeats it with a pool of N threads, to separate that cap from the rest.
- Diagnostic "warm process" rows run a one-step pipeline (plan) first in the same worker, so the
  timed run finds the OpenAI SDK imported and warmed up; a probe times the SDK's first use
  (import, client, `client.responses`, first parsed Response) in a fresh process.
- Diagnostic "state folder of an earlier run" row: as the first row (a fresh process, nothing
  of this DAG cached), but the run record and cache files exist already, made by a one-step
  run in another process, as in a project after its first run; the first row creates them.
- Diagnostic "LLM client alone" row (`--worker-bare`): the same DAG through StepChain's
  `LLMClient` (same SDK client, transport and wire format) driven by a few lines of asyncio, no
  engine: the floor the SDK and the test server leave; the engine's share is the difference.
- StepChain's modules are byte-compiled before the runs, as pip does on install (0.3.1 and the
  SDK are pip-installed); with PYTHONDONTWRITEBYTECODE set, an editable checkout would compile
  from source in every fresh process.
- The test server's listen backlog is widened first (socketserver's default of 5 makes bursts of
  connections wait ~1 s for a SYN retransmit or get reset); a burst check, before and after,
  shows it and records the peak number of requests in flight.

Makespan = wall time of the run call alone, inside the worker (no interpreter start, imports —
the OpenAI SDK's included, for both — or pipeline loading); the whole process (spawn to exit),
which pays everything, is shown beside it. Ideal =
max(layers x latency, steps x latency / N). Runs are interleaved (new, old, old+pool, new, ...);
best and median of `--repeat`. Where the time goes is split with the server's clock: lead-in (run
call -> first request), server span (first request -> last answer), tail (last answer -> run call
returns), and the gap between a step's last dependency being answered and its own request arriving.

Everything is written to a temp folder (removed at the end unless --keep); nothing leaves
127.0.0.1 except pip installing stepchain==0.3.1. Every subprocess has a timeout. Figures are
printed and written to the `llm-dag` section at the end of benchmarks/RESULTS.md; nothing asserts.
"""

from __future__ import annotations

import argparse
import http.client
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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
SECTION = "llm-dag"
TITLE = "## LLM DAG vs StepChain 0.3.1"

OLD_VERSION = "0.3.1"
OLD_PYTHON = "/root/.pyenv/versions/3.12.1/bin/python"
MODEL = "gpt-4o-mini"
RUN_ID = "bench-llm-dag"
SEED = 20240604
BACKLOG = 128  # listen() backlog for the test server (see check_server)
WORKER_TIMEOUT = 180  # seconds per worker process
PIP_TIMEOUT = 600
STEP_RE = re.compile(r"Step (l\d+_s\d+) of the benchmark DAG")
WARMUP_PROMPT = "Warm-up request."
WARMUP_YAML = f"""version: 1
name: bench-llm-warmup
steps:
  - id: warmup
    model: {MODEL}
    prompt: {WARMUP_PROMPT}
"""


# -- the DAG --------------------------------------------------------------------------------
def make_dag(layers: int, width: int) -> list[dict[str, Any]]:
    """[{id, layer, parents}] in layer order; parents: 1-3 steps of the layer before."""
    rng = random.Random(SEED)
    steps = []
    for k in range(layers):
        for i in range(width):
            parents: list[str] = []
            if k > 0:
                picked = rng.sample(range(width), rng.randint(1, min(3, width)))
                parents = [f"l{k - 1}_s{j}" for j in sorted(picked)]
            steps.append({"id": f"l{k}_s{i}", "layer": k, "parents": parents})
    return steps


def headline(step_id: str) -> str:
    return f"Step {step_id} of the benchmark DAG: sum up what the steps before it found."


def answer(step_id: str) -> str:
    return f"<result {step_id}>"


def pipeline_yaml(dag: list[dict[str, Any]]) -> str:
    lines = [
        "version: 1",
        "name: bench-llm-dag",
        "description: LLM steps in layers; each reads 1-3 outputs of the layer before.",
        "defaults:",
        f"  model: {MODEL}",
        "  timeout: 60",
        "steps:",
    ]
    for step in dag:
        lines += [f"  - id: {step['id']}", "    prompt: |", f"      {headline(step['id'])}"]
        if step["parents"]:
            lines.append("      Previous steps completed:")
        lines += [f"      - {p}: {{{{ steps.{p}.output }}}}" for p in step["parents"]]
    return "\n".join(lines) + "\n"


def old_plan(dag: list[dict[str, Any]]) -> dict[str, Any]:
    """The same DAG for 0.3.1; its executor adds the dependencies' outputs to the prompt."""
    return {
        "goal": "LLM steps in layers; each reads 1-3 outputs of the layer before.",
        "steps": [
            {"id": s["id"], "prompt": headline(s["id"]), "dependencies": s["parents"]} for s in dag
        ],
    }


# -- the test server ------------------------------------------------------------------------
def start_server(latency: float, keep_alive: bool = True) -> Any:
    sys.path.insert(0, str(REPO))
    from tests.support.fake_openai import FakeOpenAI, Reply, request_text

    def responder(body: Any) -> Any:
        found = STEP_RE.search(request_text(body))
        if found is None:
            return None  # the default reply, same latency
        return Reply.text(answer(found.group(1)), input_tokens=40, output_tokens=8).with_delay(
            latency
        )

    fake = FakeOpenAI(
        default=Reply.text("ok").with_delay(latency), responder=responder, keep_alive=keep_alive
    )
    return fake.start()


def widen_backlog(fake: Any) -> str:
    """FakeOpenAI's ThreadingHTTPServer listens with socketserver's default backlog of 5."""
    try:
        fake._server.socket.listen(BACKLOG)
    except (AttributeError, OSError) as exc:
        return f"could not widen the backlog: {exc!r}"
    return f"listen({BACKLOG}) on the server socket"


def burst(fake: Any, n: int, latency: float) -> dict[str, Any]:
    """n requests at once over fresh connections: wall time, errors and the server's peak."""
    fake.reset()
    gate = threading.Barrier(n)
    errors: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        gate.wait()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
            body = json.dumps({"model": MODEL, "input": "burst"})
            conn.request("POST", "/v1/responses", body, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            conn.close()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
        except Exception as exc:
            with lock:
                errors.append(type(exc).__name__)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.perf_counter() - start
    ok = not errors and fake.max_in_flight >= n and elapsed < latency + 0.5
    return {
        "n": n,
        "elapsed": elapsed,
        "max_in_flight": fake.max_in_flight,
        "errors": sorted({e: errors.count(e) for e in errors}.items()),
        "ok": ok,
    }


def check_server(fake: Any, concurrency: int, latency: float) -> dict[str, Any]:
    """Does the server answer `2 x concurrency` requests at once in about one latency?"""
    n = max(10, 2 * concurrency)
    stock = [burst(fake, n, latency) for _ in range(3)]
    fix = widen_backlog(fake)
    fixed = [burst(fake, n, latency) for _ in range(3)]
    return {"n": n, "stock": stock, "fix": fix, "fixed": fixed}


def server_stats(
    fake: Any, dag: list[dict[str, Any]], latency: float, run_start: float, run_end: float
) -> dict[str, Any]:
    """What the server saw of one run: timeline, peak concurrency, dependencies honoured."""
    requests = [
        r
        for r in fake.requests_to("/v1/responses")
        if r.method == "POST" and WARMUP_PROMPT not in r.text
    ]
    parents = {s["id"]: s["parents"] for s in dag}
    arrived: dict[str, float] = {}
    problems: list[str] = []
    for req in requests:
        found = STEP_RE.search(req.text)
        if found is None:
            problems.append("a request that names no step")
            continue
        sid = found.group(1)
        if sid in arrived:
            problems.append(f"{sid} asked twice")
        arrived.setdefault(sid, req.received_at)
        missing = [p for p in parents.get(sid, []) if answer(p) not in req.text]
        if missing:
            problems.append(f"{sid} without the output of {', '.join(missing)}")
    problems += [f"{sid} never asked" for sid in parents if sid not in arrived]
    stats: dict[str, Any] = {
        "requests": len(requests),
        "max_in_flight": fake.max_in_flight,
        "deps_ok": not problems,
        "problems": problems[:5],
        "sent": _shape(requests[-1].json) if requests else "",
    }
    if arrived:
        first, last = min(arrived.values()), max(arrived.values())
        gaps = [
            arrived[sid] - (max(arrived[p] for p in ps) + latency)
            for sid, ps in parents.items()
            if ps and sid in arrived and all(p in arrived for p in ps)
        ] or [0.0]
        stats |= {
            "lead_in": first - run_start,
            "server_span": last + latency - first,
            "tail": run_end - (last + latency),
            "gap_mean": statistics.fmean(gaps),
            "gap_max": max(gaps),
        }
    return stats


def _shape(body: Any) -> str:
    """The top-level fields of a request body, with the type of `input`."""
    if not isinstance(body, dict):
        return "?"
    fields = []
    for key, value in body.items():
        if key == "input":
            fields.append(f"input ({'text' if isinstance(value, str) else 'item list'})")
        elif isinstance(value, bool):
            fields.append(f"{key}={str(value).lower()}")
        else:
            fields.append(key)
    return ", ".join(fields)


# -- workers --------------------------------------------------------------------------------
def worker(path: str, concurrency: int, profile: str | None, warmup: str | None) -> None:
    """In a fresh process: load the pipeline, run it once, print one JSON line.

    With `warmup` (a folder), a one-step pipeline runs first in the same process (state in that
    folder): the timed run then finds the OpenAI SDK and the engine's modules loaded and warm.
    """
    t0 = time.perf_counter()
    # The SDK is imported before the timed call, as 0.3.1's `import stepchain` imports it.
    import openai  # noqa: F401
    import stepchain

    t1 = time.perf_counter()
    pipe = stepchain.load_pipeline(path)
    t2 = time.perf_counter()
    if warmup:
        home = Path(warmup)
        home.mkdir(parents=True, exist_ok=True)
        (home / "warmup.yaml").write_text(WARMUP_YAML, encoding="utf-8")
        settings = stepchain.Settings(home=home / "home")
        warm = stepchain.Executor(max_concurrent=concurrency, settings=settings)
        warm.run(stepchain.load_pipeline(home / "warmup.yaml"), run_id="warmup")
    executor = stepchain.Executor(max_concurrent=concurrency)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    run_start = time.time()
    c0 = time.process_time()
    p0 = time.perf_counter()
    if profiler is not None:
        result = profiler.runcall(executor.run, pipe, run_id=RUN_ID)
    else:
        result = executor.run(pipe, run_id=RUN_ID)
    run_s = time.perf_counter() - p0
    cpu_s = time.process_time() - c0
    run_end = time.time()
    if profiler is not None:
        profiler.dump_stats(profile)
    steps = list(result.steps.values())
    wrong = [r.step_id for r in steps if r.status == "completed" and r.output != answer(r.step_id)]
    errors = [f"{r.step_id}: {r.error}" for r in steps if r.status != "completed"]
    starts = [r.started_at.timestamp() for r in steps if r.started_at]
    ends = [r.completed_at.timestamp() for r in steps if r.completed_at]
    doc = {
        "engine": f"stepchain {stepchain.__version__}",
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "run_s": run_s,
        "cpu_s": cpu_s,
        "run_start": run_start,
        "run_end": run_end,
        "steps_span": max(ends) - min(starts) if starts and ends else None,
        "completed": sum(r.status == "completed" for r in steps),
        "total": len(steps),
        "wrong_outputs": wrong[:5],
        "errors": errors[:5],
        "status": result.status,
    }
    print(json.dumps(doc))


def bare_worker(dag_path: str, concurrency: int) -> None:
    """In a fresh process: the same DAG through StepChain's LLM client alone, no engine.

    A few lines of asyncio stand in for the engine: each step waits for its parents, builds the
    prompt the pipeline's template renders, and sends it with `LLMClient.complete` (the same
    SDK client, transport and wire format as a run) under a semaphore of `concurrency`. No
    records, cache, templates, scheduler or start-up: the floor the SDK leaves an engine.
    """
    t0 = time.perf_counter()
    import asyncio

    import openai  # noqa: F401
    import stepchain
    from stepchain.llm.client import LLMClient, ModelCall

    t1 = time.perf_counter()
    dag = json.loads(Path(dag_path).read_text(encoding="utf-8"))
    t2 = time.perf_counter()
    outputs: dict[str, str] = {}

    async def main() -> None:
        client = LLMClient.from_env()
        gate = asyncio.Semaphore(concurrency)
        done = {s["id"]: asyncio.Event() for s in dag}

        async def step(s: dict[str, Any]) -> None:
            for parent in s["parents"]:
                await done[parent].wait()
            lines = [headline(s["id"])]
            if s["parents"]:
                lines.append("Previous steps completed:")
            lines += [f"- {p}: {outputs[p]}" for p in s["parents"]]
            call = ModelCall(
                model=MODEL,
                messages=[{"role": "user", "content": "\n".join(lines) + "\n"}],
                timeout=60,
            )
            async with gate:
                outputs[s["id"]] = (await client.complete(call)).text
            done[s["id"]].set()

        try:
            await asyncio.gather(*(step(s) for s in dag))
        finally:
            await client.aclose()

    run_start = time.time()
    c0 = time.process_time()
    p0 = time.perf_counter()
    asyncio.run(main())
    run_s = time.perf_counter() - p0
    doc = {
        "engine": f"stepchain {stepchain.__version__} LLM client only",
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "run_s": run_s,
        "cpu_s": time.process_time() - c0,
        "run_start": run_start,
        "run_end": time.time(),
        "steps_span": run_s,  # no per-step times here: the whole gather
        "completed": len(outputs),
        "total": len(dag),
        "wrong_outputs": [k for k, v in outputs.items() if v != answer(k)][:5],
        "errors": [],
        "status": "completed",
    }
    print(json.dumps(doc))


SAMPLE_RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1,
    "model": MODEL,
    "status": "completed",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
}


def probe_sdk() -> None:
    """In a fresh process: what the OpenAI SDK costs the first time, step by step."""
    marks = [("start", time.perf_counter())]
    import openai

    marks.append(("import openai", time.perf_counter()))
    client = openai.AsyncOpenAI(api_key="test", base_url="http://127.0.0.1:9/v1", max_retries=0)
    marks.append(("AsyncOpenAI(...)", time.perf_counter()))
    _ = client.responses
    marks.append(("first client.responses", time.perf_counter()))
    from openai._models import construct_type
    from openai.types.responses import Response

    construct_type(type_=Response, value=SAMPLE_RESPONSE)
    marks.append(("first Response parsed", time.perf_counter()))
    construct_type(type_=Response, value=SAMPLE_RESPONSE)
    marks.append(("second Response parsed", time.perf_counter()))
    doc = {name: marks[i + 1][1] - marks[i][1] for i, (name, _) in enumerate(marks[1:])}
    doc["version"] = openai.__version__
    print(json.dumps(doc))


OLD_DRIVER = '''\
"""Run one plan with StepChain {version}'s AsyncExecutor; print one JSON line."""
import json
import sys
import time

t0 = time.perf_counter()
import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

import stepchain
from stepchain import AsyncExecutor, Plan, Step

t1 = time.perf_counter()
spec = json.load(open(sys.argv[1]))
concurrency, pool, warmup = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
plan = Plan(goal=spec["goal"], steps=[Step(**s) for s in spec["steps"]])
t2 = time.perf_counter()


async def main(plan, run_id):
    if pool:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(pool))
    executor = AsyncExecutor(max_concurrent=concurrency)
    return await executor.execute_plan(plan, run_id=run_id, resume=False)


if warmup:  # one step first, in the same process: the timed run finds everything loaded
    warm = Plan(goal="warm-up", steps=[Step(id="warmup", prompt="{warmup_prompt}")])
    asyncio.run(main(warm, "warmup"))
run_start = time.time()
c0 = time.process_time()
p0 = time.perf_counter()
results = asyncio.run(main(plan, "{run_id}"))
run_s = time.perf_counter() - p0
cpu_s = time.process_time() - c0
run_end = time.time()
done = [r for r in results if r.status.value == "completed"]
wrong = [r.step_id for r in done if (r.content or "") != "<result " + r.step_id + ">"]
errors = [r.step_id + ": " + str(r.error) for r in results if r.status.value != "completed"]
starts = [r.started_at.timestamp() for r in results if r.started_at]
ends = [r.completed_at.timestamp() for r in results if r.completed_at]
print(json.dumps({{
    "engine": "stepchain " + stepchain.__version__,
    "import_s": t1 - t0,
    "load_s": t2 - t1,
    "run_s": run_s,
    "cpu_s": cpu_s,
    "run_start": run_start,
    "run_end": run_end,
    "steps_span": max(ends) - min(starts) if starts and ends else None,
    "completed": len(done),
    "total": len(plan.steps),
    "wrong_outputs": wrong[:5],
    "errors": errors[:5],
    "default_pool": pool or min(32, (os.cpu_count() or 1) + 4),
}}))
'''


def worker_env(fake: Any, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and not k.startswith(("STEPCHAIN_", "OPENAI_"))
    }
    env |= {
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "test",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env |= extra
    return env


def spawn(
    label: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    fake: Any,
    dag: list[dict[str, Any]],
    latency: float,
) -> dict[str, Any]:
    fake.reset()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=WORKER_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"label": label, "failed": f"timed out after {WORKER_TIMEOUT}s"}
    whole = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    try:
        doc = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (done.stderr or done.stdout).strip()[-3000:]
        return {"label": label, "failed": f"exit {done.returncode}: {tail}"}
    doc |= {"label": label, "whole_s": whole}
    doc |= server_stats(fake, dag, latency, doc["run_start"], doc["run_end"])
    if doc["completed"] != doc["total"] or doc["wrong_outputs"] or not doc["deps_ok"]:
        doc["failed"] = "; ".join(
            doc["errors"] + [f"wrong output: {w}" for w in doc["wrong_outputs"]] + doc["problems"]
        )
    return doc


# -- StepChain 0.3.1 ------------------------------------------------------------------------
def old_python(tmp: Path, given: str | None) -> tuple[str | None, str]:
    """A Python with stepchain==0.3.1: the given venv, or a new one in the temp folder."""
    if given:
        python = str(Path(given) / "bin" / "python")
        probe = subprocess.run(
            [python, "-c", "import stepchain; print(stepchain.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.stdout.strip() == OLD_VERSION:
            return python, f"existing venv {given}"
        return None, f"{given} has no stepchain {OLD_VERSION}: {probe.stdout}{probe.stderr}"
    if not Path(OLD_PYTHON).exists():
        return None, f"{OLD_PYTHON} not found (StepChain {OLD_VERSION} needs Python 3.12)"
    venv = tmp / "venv-old"
    steps = [
        [OLD_PYTHON, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"stepchain=={OLD_VERSION}",
        ],
    ]
    start = time.perf_counter()
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(argv[-3:])}` timed out after {PIP_TIMEOUT}s"
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line]
            return None, f"`{' '.join(argv)}` failed: {' '.join(errors)[-1500:]}"
    return str(
        venv / "bin" / "python"
    ), f"pip install into a new venv: {time.perf_counter() - start:.0f} s"


# -- profile ---------------------------------------------------------------------------------
def format_profile(path: Path, top: int = 25) -> str:
    texts = []
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).sort_stats(sort).print_stats(top)
        text = out.getvalue().replace(str(REPO) + "/", "")
        text = re.sub(r"/\S*/site-packages/", "", re.sub(r"/\S*/lib/python3\.\d+/", "", text))
        lines = text.splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        head = [line.strip() for line in lines[:start] if "function calls" in line]
        texts.append("\n".join(head + lines[start:]).rstrip())
    return "\n\n".join(texts)


# -- report ----------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "engine"], capture_output=True, text=True
    )
    changed = sorted({line[3:] for line in dirty.stdout.splitlines() if line.strip()})
    code = head.stdout.strip() + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    )
    import stepchain

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{stamp} · nproc {os.cpu_count()} · {cpu} · Python {platform.python_version()} · "
        f"stepchain {stepchain.__version__} ({code}) · load average at start {load}"
    )


def summary(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    good = [r for r in runs if "failed" not in r]
    if not good:
        return None

    def med(key: str) -> float:
        return statistics.median(r[key] for r in good)

    times = [r["run_s"] for r in good]
    return {
        "n": len(good),
        "best": min(times),
        "median": statistics.median(times),
        "times": times,
        "whole_best": min(r["whole_s"] for r in good),
        "whole_median": med("whole_s"),
        "cpu_median": med("cpu_s"),
        "import_median": med("import_s"),
        "load_median": med("load_s"),
        "max_in_flight": max(r["max_in_flight"] for r in good),
        "requests": good[0]["requests"],
        "sent": good[0]["sent"],
        "lead_in": med("lead_in"),
        "server_span": med("server_span"),
        "tail": med("tail"),
        "gap_mean": med("gap_mean"),
        "gap_max": med("gap_max"),
        "steps_span": med("steps_span"),
    }


def ms(x: float) -> str:
    return f"{x * 1000:.0f}"


def pct_over(x: float, ideal: float) -> str:
    return f"{(x / ideal - 1) * 100:+.1f} %"


def ratio(rows: dict[str, Any], old: str, new: str, key: str) -> float | None:
    a, b = rows.get(old, {}).get("summary"), rows.get(new, {}).get("summary")
    return a[key] / b[key] if a and b else None


def report(ctx: dict[str, Any]) -> str:
    a = ctx["args"]
    ideal = ctx["ideal"]
    rows = ctx["rows"]
    conn = (
        "closes every connection after its answer (`--close-connections`)"
        if a.close_connections
        else "keeps connections alive between requests, as api.openai.com does"
    )
    out = [
        TITLE,
        "",
        f"Machine: {ctx['machine']}",
        "",
        f"`python benchmarks/bench_llm.py` — a DAG of {ctx['n_steps']} `prompt` steps, {a.layers} "
        f"layers of {a.width}; each step of layers 2–{a.layers} reads the output of 1–3 steps of the "
        f"layer before ({ctx['edges']} `{{{{ steps.X.output }}}}` references, a fixed pseudo-random "
        f"choice). The test server (`tests/support/fake_openai.py`, 127.0.0.1, in the benchmark's "
        f"process) answers every `/v1/responses` request after {ms(a.latency)} ms. Concurrency "
        f"limit {a.concurrency} for both engines; cold cache; each run in a fresh process, runs "
        f"interleaved, {a.repeat} of each; the server {conn}. **Ideal** = max({a.layers} × {a.latency:g} s, "
        f"{ctx['n_steps']} × {a.latency:g} s / {a.concurrency}) = **{ideal:.2f} s**. *Makespan* = "
        f"wall time of the run call in the worker (`Executor(max_concurrent={a.concurrency})"
        f".run(pipeline)`; 0.3.1: `asyncio.run(AsyncExecutor(max_concurrent={a.concurrency})"
        f".execute_plan(plan, run_id, resume=False))`), without interpreter start, imports and "
        f"loading the pipeline — for both engines the OpenAI SDK is imported before the timed "
        f"call (0.3.1's `import stepchain` imports it; StepChain's worker imports `openai` "
        f"itself, since StepChain loads it only when a run needs it); *CPU* = CPU seconds of the worker process during that call; "
        f"*whole process* = spawn to exit. *Warm process* rows run a one-step pipeline first in "
        f"the same process, so the timed run finds the OpenAI SDK loaded and warmed up.",
        "",
        "| engine | makespan best s | median s | runs s | best vs ideal | CPU s (median) "
        "| whole process best / median s | requests | max in flight | dependencies honoured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        sm = row["summary"]
        if sm is None:
            out.append(f"| {row['title']} | failed | | | | | | | | |")
            continue
        out.append(
            f"| {row['title']} | **{sm['best']:.3f}** | {sm['median']:.3f} | "
            f"{', '.join(f'{t:.3f}' for t in sm['times'])} | {pct_over(sm['best'], ideal)} | "
            f"{sm['cpu_median']:.2f} | {sm['whole_best']:.2f} / {sm['whole_median']:.2f} | "
            f"{sm['requests']} | {sm['max_in_flight']} | yes |"
        )
    out.append("")
    new = rows["new"]["summary"]
    if new is not None:
        ok = new["best"] <= ideal * 1.10
        line = (
            f"- **StepChain vs the ideal bound**: best {pct_over(new['best'], ideal)}, median "
            f"{pct_over(new['median'], ideal)} — target within +10 %: "
            f"{'met' if ok else '**MISSED**'}."
        )
        for key, what in (
            ("new_warm", "Warm process"),
            ("used_home", "State folder made by an earlier run"),
        ):
            other = rows.get(key, {}).get("summary")
            if other is not None:
                line += (
                    f" {what}: best {pct_over(other['best'], ideal)}, median "
                    f"{pct_over(other['median'], ideal)}."
                )
        out.append(line)
    best, median = ratio(rows, "old", "new", "best"), ratio(rows, "old", "new", "median")
    if best is not None and median is not None:
        whole = ratio(rows, "old", "new", "whole_best")
        out.append(
            f"- **Ratio 0.3.1 / StepChain** (makespan; > 1 means StepChain is faster): best "
            f"{best:.2f}×, median {median:.2f}×; whole process, best: {whole:.2f}× — target "
            f"faster than 0.3.1: {'met' if best > 1 else '**MISSED**'}."
        )
        warm_best = ratio(rows, "old_warm", "new_warm", "best")
        if warm_best is not None:
            out.append(f"- Warm processes: 0.3.1 / StepChain best {warm_best:.2f}×.")
    elif "old_error" in ctx:
        out.append(f"- StepChain {OLD_VERSION} could not be run: {ctx['old_error']}")
    bare = rows.get("bare", {}).get("summary")
    if new is not None and bare is not None:
        out.append(
            f"- **Floor without the engine**: the same DAG through StepChain's LLM client alone "
            f"(same SDK client, transport and wire format; a few lines of asyncio instead of the "
            f"engine: no records, cache, templates or scheduler) takes best {bare['best']:.3f} s "
            f"({pct_over(bare['best'], ideal)}), median {bare['median']:.3f} s "
            f"({pct_over(bare['median'], ideal)}). The engine adds "
            f"{(new['best'] - bare['best']) * 1000:.0f} ms (best vs best) and "
            f"{(new['median'] - bare['median']) * 1000:.0f} ms (median vs median) to that."
        )
    if "old_threads" in ctx:
        out.append(
            f"- 0.3.1 runs each step's blocking OpenAI call in asyncio's default thread pool "
            f"({ctx['old_threads']} threads here: min(32, cpu + 4)), so at most {ctx['old_threads']} "
            f"of its requests are in flight whatever `max_concurrent` says; the pool row gives "
            f"it {a.concurrency} threads."
        )
    out += [
        "",
        "Where the time goes (medians; ms unless marked; server clock): *lead-in* = run call → "
        "first request; *server span* = first request → last answer; *tail* = last answer → run "
        "call returns; *gap* = a step's last dependency answered → its own request arrives "
        "(layers 2 and up).",
        "",
        "| engine | import s | load s | lead-in | server span | tail | gap mean | gap max "
        "| first step start → last step end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        sm = row["summary"]
        if sm is None:
            continue
        out.append(
            f"| {row['title']} | {sm['import_median']:.2f} | {sm['load_median']:.3f} | "
            f"{ms(sm['lead_in'])} | {ms(sm['server_span'])} | {ms(sm['tail'])} | "
            f"{ms(sm['gap_mean'])} | {ms(sm['gap_max'])} | {ms(sm['steps_span'])} |"
        )
    sdk = ctx.get("sdk", {})
    if "error" not in sdk and sdk:
        costs = ", ".join(
            f"{name} {value * 1000:.0f} ms" for name, value in sdk.items() if name != "version"
        )
        out += [
            "",
            f"First use of the OpenAI SDK ({sdk['version']}) in a fresh Python "
            f"{platform.python_version()} process: {costs}. Both workers import `openai` before "
            f"the timed call. Inside it, 0.3.1 pays the rest (it calls `client.responses.create` "
            f"and gets Response models); StepChain builds its client there but posts through "
            f"`client.post` and reads the answer as JSON, so it pays neither `client.responses` "
            f"nor the first Response model.",
        ]
    sent = [
        f"{row['title']}: {row['summary']['sent']}"
        for key, row in rows.items()
        if key in ("new", "old") and row["summary"]
    ]
    if sent:
        out += ["", "Request body fields (last request of a run): " + "; ".join(sent) + "."]
    failures = [
        f"- {row['title']}: {r['failed'][:1500]}"
        for row in rows.values()
        for r in row["runs"]
        if "failed" in r
    ]
    if failures:
        out += ["", "Failed runs:", "", *failures]
    out += ["", _check_text(ctx["check"], a.latency), ""]
    out.append(f"StepChain {OLD_VERSION}: {ctx.get('old_setup', 'not run')}.")
    if ctx.get("compiled"):
        out.append(f"StepChain: {ctx['compiled']}.")
    for what, run_s, text in ctx.get("profiles", []):
        out += [
            "",
            f"<details><summary>cProfile of one StepChain run, {what} (<code>Executor.run</code> "
            f"only, {run_s:.2f} s under the profiler; top 25 by own time, then cumulative)"
            "</summary>",
            "",
            "```",
            text,
            "```",
            "</details>",
        ]
    return "\n".join(out)


def _check_text(check: dict[str, Any], latency: float) -> str:
    def one(b: dict[str, Any]) -> str:
        errs = ", ".join(f"{k} × {v}" for k, v in b["errors"]) or "no errors"
        return f"{b['elapsed']:.2f} s (peak {b['max_in_flight']}, {errs})"

    stock = "; ".join(one(b) for b in check["stock"])
    fixed = "; ".join(one(b) for b in check["fixed"])
    verdict = "sustains" if all(b["ok"] for b in check["fixed"]) else "does NOT sustain"
    return (
        f"Test server check: {check['n']} requests sent at once on fresh connections, each "
        f"answered after {ms(latency)} ms. As shipped (`ThreadingHTTPServer`, socketserver's "
        f"listen backlog of 5): {stock}. After {check['fix']}: {fixed} — the server {verdict} the "
        f"concurrency. (A connection that overflows the backlog waits for a SYN retransmit, ~1 s, "
        f"or is reset; every benchmark run uses the widened backlog.)"
    )


def write_section(body: str) -> None:
    """Put this script's section at the very end of RESULTS.md, replacing an earlier one."""
    begin, end = f"<!-- BEGIN {SECTION} -->", f"<!-- END {SECTION} -->"
    text = (
        RESULTS.read_text(encoding="utf-8")
        if RESULTS.exists()
        else "# StepChain benchmark results\n"
    )
    text = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", "", text, flags=re.DOTALL)
    RESULTS.write_text(f"{text.rstrip()}\n\n{begin}\n{body.rstrip()}\n{end}\n", encoding="utf-8")


def console(ctx: dict[str, Any]) -> None:
    ideal = ctx["ideal"]
    print(f"\nideal bound {ideal:.3f} s")
    for row in ctx["rows"].values():
        sm = row["summary"]
        if sm is None:
            print(f"{row['title']}: FAILED")
            continue
        print(
            f"{row['title']}: best {sm['best']:.3f} s, median {sm['median']:.3f} s "
            f"({pct_over(sm['best'], ideal)} vs ideal), CPU {sm['cpu_median']:.2f} s, "
            f"whole process {sm['whole_best']:.2f} s, "
            f"max in flight {sm['max_in_flight']}, lead-in {ms(sm['lead_in'])} ms, "
            f"gap mean {ms(sm['gap_mean'])} ms, tail {ms(sm['tail'])} ms"
        )
    for old, new in (("old", "new"), ("old_warm", "new_warm")):
        best, median = ratio(ctx["rows"], old, new, "best"), ratio(ctx["rows"], old, new, "median")
        if best is not None and median is not None:
            print(f"ratio {old} / {new}: best {best:.2f}x, median {median:.2f}x")
    if "old_error" in ctx:
        print(f"StepChain {OLD_VERSION} not run: {ctx['old_error']}")


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--old-venv", help="reuse a venv that has stepchain==0.3.1")
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument(
        "--close-connections",
        action="store_true",
        help="the test server closes every connection after its answer (its default in tests)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of writing RESULTS.md"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-profile", help=argparse.SUPPRESS)
    parser.add_argument("--worker-warmup", help=argparse.SUPPRESS)
    parser.add_argument("--worker-bare", help=argparse.SUPPRESS)
    parser.add_argument("--probe-sdk", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.probe_sdk:
        probe_sdk()
        return
    if a.worker:
        worker(a.worker, a.concurrency, a.worker_profile, a.worker_warmup)
        return
    if a.worker_bare:
        bare_worker(a.worker_bare, a.concurrency)
        return

    tmp = Path(tempfile.mkdtemp(prefix="stepchain-bench-llm-"))
    fake = None
    try:
        fake = start_server(a.latency, keep_alive=not a.close_connections)
        ctx = run_all(a, tmp, fake)
    finally:
        if fake is not None:
            fake.stop()
        if a.keep:
            print(f"work files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    console(ctx)
    body = report(ctx)
    if a.no_write:
        print(f"\n{body}")
    else:
        write_section(body)
        print(f"\nwrote the {SECTION} section of {RESULTS.relative_to(REPO)}")


def run_all(a: argparse.Namespace, tmp: Path, fake: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {"args": a, "machine": machine()}
    dag = make_dag(a.layers, a.width)
    ctx["n_steps"] = len(dag)
    ctx["edges"] = sum(len(s["parents"]) for s in dag)
    ctx["ideal"] = max(a.layers * a.latency, len(dag) * a.latency / a.concurrency)

    print(f"test server on {fake.base_url}; checking it answers concurrent requests ...")
    ctx["check"] = check_server(fake, a.concurrency, a.latency)
    print(_check_text(ctx["check"], a.latency))

    yaml_path = tmp / "llm_dag.yaml"
    yaml_path.write_text(pipeline_yaml(dag), encoding="utf-8")
    dag_path = tmp / "llm_dag.json"
    dag_path.write_text(json.dumps(dag), encoding="utf-8")
    ctx["compiled"] = byte_compile()
    plan_path = tmp / "plan_031.json"
    plan_path.write_text(json.dumps(old_plan(dag)), encoding="utf-8")
    driver = tmp / "run_031.py"
    driver.write_text(
        OLD_DRIVER.format(version=OLD_VERSION, run_id=RUN_ID, warmup_prompt=WARMUP_PROMPT),
        encoding="utf-8",
    )

    python_old = None
    if a.skip_old:
        ctx["old_setup"] = "skipped (--skip-old)"
    else:
        print(f"installing stepchain=={OLD_VERSION} for {OLD_PYTHON} ...")
        python_old, ctx["old_setup"] = old_python(tmp, a.old_venv)
        if python_old is None:
            ctx["old_error"] = ctx["old_setup"]
        print(ctx["old_setup"])

    me = str(Path(__file__).resolve())
    conc = str(a.concurrency)
    version = _version()

    def new_run(key: str, i: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
        argv = [sys.executable, me, "--worker", str(yaml_path), "--concurrency", conc, *extra]
        env = worker_env(fake, STEPCHAIN_HOME=str(tmp / f"home-{key}-{i}"))
        return spawn(key, argv, env, tmp, fake, dag, a.latency)

    warmup_path = tmp / "warmup.yaml"
    warmup_path.write_text(WARMUP_YAML, encoding="utf-8")

    def used_home_run(key: str, i: int) -> dict[str, Any]:
        """A fresh process on a state folder that an earlier run (another process) created."""
        home = tmp / f"home-{key}-{i}"
        prepare = (
            "import stepchain, sys; "
            "stepchain.Executor().run(stepchain.load_pipeline(sys.argv[1]), run_id='earlier')"
        )
        subprocess.run(
            [sys.executable, "-c", prepare, str(warmup_path)],
            env=worker_env(fake, STEPCHAIN_HOME=str(home)),
            capture_output=True,
            timeout=WORKER_TIMEOUT,
            check=True,
        )
        argv = [sys.executable, me, "--worker", str(yaml_path), "--concurrency", conc]
        return spawn(
            key, argv, worker_env(fake, STEPCHAIN_HOME=str(home)), tmp, fake, dag, a.latency
        )

    def bare_run(key: str, i: int) -> dict[str, Any]:
        argv = [sys.executable, me, "--worker-bare", str(dag_path), "--concurrency", conc]
        return spawn(key, argv, worker_env(fake), tmp, fake, dag, a.latency)

    def old_run(key: str, i: int, pool: int, warmup: bool) -> dict[str, Any]:
        argv = [python_old, str(driver), str(plan_path), conc, str(pool), "1" if warmup else "0"]
        store = str(tmp / f"store-{key}-{i}")
        env = worker_env(fake, STEPCHAIN_STORAGE_PATH=store, STEPCHAIN_MODEL=MODEL)
        return spawn(key, argv, env, tmp, fake, dag, a.latency)

    variants: dict[str, tuple[str, Any]] = {
        "new": (f"StepChain {version} (this repo)", lambda i: new_run("new", i)),
    }
    if python_old:
        variants["old"] = (f"StepChain {OLD_VERSION} (PyPI)", lambda i: old_run("old", i, 0, False))
    variants["new_warm"] = (
        f"StepChain {version}, warm process (diagnostic)",
        lambda i: new_run("new_warm", i, ("--worker-warmup", str(tmp / f"warm-{i}"))),
    )
    variants["used_home"] = (
        f"StepChain {version}, state folder of an earlier run (diagnostic)",
        lambda i: used_home_run("used_home", i),
    )
    variants["bare"] = (
        f"StepChain {version} LLM client alone, no engine (diagnostic)",
        lambda i: bare_run("bare", i),
    )
    if python_old:
        variants["old_warm"] = (
            f"StepChain {OLD_VERSION}, warm process (diagnostic)",
            lambda i: old_run("old_warm", i, 0, True),
        )
        variants["old_pool"] = (
            f"StepChain {OLD_VERSION}, {a.concurrency}-thread pool (diagnostic)",
            lambda i: old_run("old_pool", i, a.concurrency, False),
        )
    rows = {key: {"title": title, "runs": []} for key, (title, _) in variants.items()}
    for i in range(a.repeat):
        for key, (title, launch) in variants.items():
            run = launch(i)
            rows[key]["runs"].append(run)
            _progress(i, title, run)
            if key == "old" and "default_pool" in run:
                ctx["old_threads"] = run["default_pool"]
    for row in rows.values():
        row["summary"] = summary(row["runs"])
    if python_old and rows["old"]["summary"] is None:
        ctx["old_error"] = rows["old"]["runs"][0].get("failed", "no successful run")
    ctx["rows"] = rows

    print("timing the OpenAI SDK's first use in a fresh process ...")
    probe = subprocess.run(
        [sys.executable, me, "--probe-sdk"],
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
        env=worker_env(fake),
    )
    try:
        ctx["sdk"] = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        ctx["sdk"] = {"error": (probe.stderr or probe.stdout)[-500:]}
    print(ctx["sdk"])

    new = rows["new"]["summary"]
    missed = new is None or new["best"] > ctx["ideal"] * 1.10
    ctx["profiles"] = []
    if a.profile == "always" or (a.profile == "auto" and missed):
        for key, what in (("new", "cold process"), ("new_warm", "warm process")):
            print(f"profiling one StepChain run ({what}) ...")
            prof = tmp / f"{key}.prof"
            extra = ["--worker-profile", str(prof)]
            if key == "new_warm":
                extra += ["--worker-warmup", str(tmp / "warm-profile")]
            run = new_run(f"profile-{key}", 0, tuple(extra))
            if prof.exists():
                text = format_profile(prof)
                ctx["profiles"].append((what, run.get("run_s", 0.0), text))
                print(text)
    return ctx


def _progress(i: int, title: str, run: dict[str, Any]) -> None:
    if "failed" in run:
        print(f"  run {i + 1} {title}: FAILED {run['failed'][:800]}")
    else:
        print(
            f"  run {i + 1} {title}: makespan {run['run_s']:.3f} s, whole {run['whole_s']:.2f} s, "
            f"max in flight {run['max_in_flight']}"
        )


def byte_compile() -> str:
    """Byte-compile StepChain's modules, as pip does when it installs a wheel.

    This checkout is installed editable, and with PYTHONDONTWRITEBYTECODE set (as on this
    machine) every fresh process would compile StepChain from source, while 0.3.1, installed
    by pip, and the SDK load their bytecode.
    """
    import compileall

    import stepchain

    package = Path(stepchain.__file__).resolve().parent
    ok = compileall.compile_dir(str(package), quiet=1, workers=1)
    return f"{package} byte-compiled first ({'ok' if ok else 'with errors'})"


def _version() -> str:
    import stepchain

    return stepchain.__version__


if __name__ == "__main__":
    main()
