"""LLM DAG at realistic latency: makespan against the critical-path bound, and against StepChain 0.3.1.

    python benchmarks/bench_llm.py [--layers 6] [--width 10] [--max-concurrent 16] [--skip-old]

6 layers x 10 `prompt` steps; each step of layer k > 0 reads the outputs of 1-3 steps of layer
k-1 (seeded) through `{{ steps.X.output }}`. The test server (tests/support/fake_openai.py, real
HTTP on 127.0.0.1, keep-alive) answers each step after its own latency, 1 s +- 30 % from a seeded
RNG per step id. StepChain runs in a fresh process through the stock OpenAI SDK (OPENAI_API_KEY=
test-key, OPENAI_BASE_URL=the server): `Executor(max_concurrent=N).execute(...)`, cold cache.
Makespan = wall time of that call (the SDK imported before it, as 0.3.1's `import stepchain` does).
Bound = the critical path of the latencies the server actually applied. Target: makespan <= 1.03 x
bound. Also checked: the bound's own schedule needs no more than N requests at once, every request
carried its dependencies' outputs, every step got its own answer. StepChain 0.3.1 (PyPI, Python
3.12, own venv under benchmarks/_work/venvs/) runs the same DAG as a `Plan` of `Step(id, prompt,
dependencies)` with `AsyncExecutor(max_concurrent=N).execute_plan(...)`; skipped, with the reason,
if that fails.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Report, arguments, find_python, fresh_home, tool_python, work_dir

SEED = 20240604
STEP_RE = re.compile(r"Step (l\d+_s\d+) of the benchmark DAG")


def make_dag(layers: int, width: int) -> list[tuple[str, list[str]]]:
    rng, dag = random.Random(SEED), []
    for k in range(layers):
        for i in range(width):
            picked = sorted(rng.sample(range(width), rng.randint(1, 3))) if k else []
            dag.append((f"l{k}_s{i}", [f"l{k - 1}_s{j}" for j in picked]))
    return dag


def headline(sid: str) -> str:  # the server finds the step in the request by this line
    return f"Step {sid} of the benchmark DAG: sum up what the steps before it found."


answer = "<result {}>".format  # each step's answer names it: outputs and requests are checked


def pipeline_yaml(dag) -> str:
    lines = ["version: 1", "name: bench-llm", "defaults: {model: gpt-4o-mini}", "steps:"]
    for sid, parents in dag:
        lines += [f"  - id: {sid}", "    prompt: |", f"      {headline(sid)}"]
        lines += [f"      - {p}: {{{{ steps.{p}.output }}}}" for p in parents]
    return "\n".join(lines) + "\n"


WORKER = """import asyncio, json, sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{load}
wall0, start = time.time(), time.perf_counter()
{run}
run_s = time.perf_counter() - start
outputs = {{r.step_id: {output} if {ok} else f"failed: {{r.error}}" for r in results}}
print(json.dumps({{"import_s": t1 - t0, "run_s": run_s, "wall0": wall0, "outputs": outputs}}))
"""
NEW_WORKER = WORKER.format(
    imports="import openai, stepchain\nfrom stepchain import Executor",
    load="pipe = stepchain.load_pipeline(sys.argv[1])",
    run="results = Executor(max_concurrent=int(sys.argv[2])).execute(pipe, run_id='x')",
    output="r.output",
    ok="r.status == 'completed'",
)
OLD_WORKER = WORKER.format(
    imports="from stepchain import AsyncExecutor, Plan, Step",
    load="plan = Plan(goal='benchmark', steps=[Step(**s) for s in json.load(open(sys.argv[1]))])",
    run="results = asyncio.run(AsyncExecutor(max_concurrent=int(sys.argv[2]))"
    ".execute_plan(plan, 'x', resume=False))",
    output="r.content",
    ok="r.status.value == 'completed'",
)


def measure(argv: list[str], env: dict, fake, dag) -> dict | str:
    """Run one engine's worker; its figures and what the server saw (a string: why it failed)."""
    fake.reset()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return "no answer within 300 s"
    if done.returncode != 0:
        return f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    applied, arrived, problems, parents = {}, {}, [], dict(dag)
    for req in fake.requests_to("/v1/responses"):
        sid = found.group(1) if (found := STEP_RE.search(req.text)) else "?"
        problems += [f"{sid} asked twice"] if sid in applied else []
        applied[sid], arrived[sid] = (req.reply.delay if req.reply else 0.0), req.received_at
        problems += [
            f"{sid} lacks {p}'s output" for p in parents.get(sid, []) if answer(p) not in req.text
        ]
    problems += [f"{sid}: {out}" for sid, out in doc["outputs"].items() if out != answer(sid)]
    problems += [f"{sid} never asked" for sid in parents if sid not in applied]
    if not arrived:
        return f"the server got no request; {problems[:3]}"
    finish = {}
    for sid, ps in dag:  # the critical path of the latencies the server applied
        finish[sid] = max((finish[p] for p in ps), default=0.0) + applied.get(sid, 0.0)
    starts = {s: f - applied.get(s, 0.0) for s, f in finish.items()}
    answered = {sid: arrived[sid] + applied[sid] for sid in arrived}
    gaps = [arrived[s] - max(answered[p] for p in ps) for s, ps in dag
            if ps and s in arrived and all(p in answered for p in ps)] or [0.0]  # fmt: skip
    return {
        "makespan": doc["run_s"],
        "bound": max(finish.values()),
        "peak": max(sum(starts[s] <= t < f for s, f in finish.items()) for t in starts.values()),
        "in_flight": fake.max_in_flight,
        "import": doc["import_s"],
        "lead": min(arrived.values()) - doc["wall0"],
        "tail": doc["wall0"] + doc["run_s"] - max(answered.values()),
        "gap": sum(gaps) / len(gaps),
        "gap_max": max(gaps),
        "problems": problems,
    }


def record(report: Report, name: str, m: dict, cap: int, baseline: float | None = None) -> None:
    """The target is this checkout's; 0.3.1 (given `baseline`) is compared with it."""
    ratio = f"; {m['makespan'] / baseline:.2f}× the makespan of this checkout" if baseline else ""
    report.row(
        f"{name}: makespan / critical-path bound",
        f"{m['makespan']:.2f} s / {m['bound']:.2f} s = {m['makespan'] / m['bound']:.3f}×, "
        f"{m['in_flight']} requests in flight at most{ratio}",
        "" if baseline else "≤ 1.03×",
        None if baseline else m["makespan"] <= 1.03 * m["bound"] and not m["problems"],
    )
    checks = f"PROBLEMS: {'; '.join(m['problems'][:4])}" if m["problems"] else (
        "every request carried its dependencies' outputs, every step got its own answer")  # fmt: skip
    report.note(
        f"{name}: importing the engine and the SDK {m['import']:.2f} s (before the run); the "
        f"bound's own schedule needs {m['peak']} requests at once (cap {cap}); run call -> first "
        f"request {m['lead'] * 1000:.0f} ms, last answer -> return {m['tail'] * 1000:.0f} ms, last "
        f"dependency answered -> request sent {m['gap'] * 1000:.0f} ms on average (max "
        f"{m['gap_max'] * 1000:.0f} ms); {checks}"
    )


def main() -> None:
    args = arguments(__doc__, layers=6, width=10, max_concurrent=16, skip_old=False)
    sys.path.insert(0, str(REPO))
    from tests.support.fake_openai import FakeOpenAI, Reply, request_text

    dag = make_dag(args.layers, args.width)
    latency = {sid: round(random.Random(f"{SEED}:{sid}").uniform(0.7, 1.3), 3) for sid, _ in dag}

    def responder(body):
        if found := STEP_RE.search(request_text(body)):
            return Reply.text(answer(found.group(1))).with_delay(latency[found.group(1)])
        return None

    report = Report(
        f"LLM DAG: {args.layers} layers × {args.width} prompt steps, 1 s ± 30 % per request",
        f"{len(dag)} steps, each reading 1-3 of the layer before; test server on 127.0.0.1, "
        f"seeded latencies; --max-concurrent {args.max_concurrent}; cold cache",
    )
    folder = work_dir("llm")
    plan = [{"id": sid, "prompt": headline(sid), "dependencies": ps} for sid, ps in dag]
    for name, text in [("dag.yaml", pipeline_yaml(dag)), ("plan.json", json.dumps(plan)),
                       ("worker.py", NEW_WORKER), ("old_worker.py", OLD_WORKER)]:  # fmt: skip
        (folder / name).write_text(text, encoding="utf-8")
    py312 = find_python("3.12")
    with FakeOpenAI(responder=responder, keep_alive=True) as fake:
        env = dict(os.environ, **fake.env("test-key"))
        cap, ours = str(args.max_concurrent), None
        argv = [sys.executable, str(folder / "worker.py"), str(folder / "dag.yaml"), cap]
        m = measure(argv, dict(env, STEPCHAIN_HOME=str(fresh_home())), fake, dag)
        if isinstance(m, str):
            report.note(f"StepChain (this checkout): failed, {m}")
        else:
            record(report, "StepChain (this checkout)", m, args.max_concurrent)
            ours = m["makespan"]
        python, how = (None, "skipped (--skip-old)") if args.skip_old else (
            tool_python("stepchain-0.3.1", ["stepchain==0.3.1"], py312) if py312
            else (None, "no Python 3.12 found (0.3.1 requires it)"))  # fmt: skip
        if python:
            argv = [python, str(folder / "old_worker.py"), str(folder / "plan.json"), cap]
            m = measure(argv, dict(env, STEPCHAIN_STORAGE_PATH=str(fresh_home())), fake, dag)
            how = m if isinstance(m, str) else None
            if not how:
                record(report, "StepChain 0.3.1 (PyPI)", m, args.max_concurrent, ours)
        if how:
            report.note(f"StepChain 0.3.1: not measured, {how}")
    report.save(args.json)


if __name__ == "__main__":
    main()
