"""LLM DAG at realistic latency: makespan against the critical-path bound, and against StepChain 0.3.1.

    python benchmarks/bench_llm.py [--layers 6] [--width 10] [--max-concurrent 16] [--skip-old]

The DAG: 6 layers x 10 `prompt` steps; every step of layer k > 0 reads the outputs of 1-3 steps
of layer k-1 (a seeded choice) through `{{ steps.X.output }}`. The test server
(tests/support/fake_openai.py, real HTTP on 127.0.0.1, in this process, keep-alive) answers each
step after its own latency, 1 s +- 30 % drawn from a seeded RNG per step id, so every run sees the
same latencies. StepChain runs in a fresh process through the stock OpenAI SDK
(OPENAI_API_KEY=test-key, OPENAI_BASE_URL=the server), `Executor(max_concurrent=N).run(...)`,
cold cache. Makespan = wall time of that call; the SDK is imported before it (as 0.3.1's
`import stepchain` does), and the import is reported apart.

Bound = the critical path computed from the delays the server actually applied (longest path of
per-request latencies through the DAG). Target: makespan <= 1.03 x bound. The script also checks
that the bound's own schedule never needs more than N requests at once (else the cap, not the
engine, would set the pace), that every request carried its dependencies' outputs, and that
every step got its own answer.

StepChain 0.3.1 (PyPI, needs Python 3.12) runs the same DAG as a `Plan` of `Step(id, prompt,
dependencies)` with `AsyncExecutor(max_concurrent=N).execute_plan(...)`, installed into its own
venv under benchmarks/_work/venvs/ (skipped, with the reason, when that fails).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
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


def headline(sid: str) -> str:
    return f"Step {sid} of the benchmark DAG: sum up what the steps before it found."


def answer(sid: str) -> str:
    return f"<result {sid}>"


def pipeline_yaml(dag) -> str:
    lines = ["version: 1", "name: bench-llm", "defaults: {model: gpt-4o-mini, timeout: 60}", "steps:"]
    for sid, parents in dag:
        lines += [f"  - id: {sid}", "    prompt: |", f"      {headline(sid)}"]
        lines += [f"      - {p}: {{{{ steps.{p}.output }}}}" for p in parents]
    return "\n".join(lines) + "\n"


NEW_WORKER = """
import json, sys, time
t0 = time.perf_counter()
import openai, stepchain
t1 = time.perf_counter()
pipe = stepchain.load_pipeline(sys.argv[1])
wall0, start = time.time(), time.perf_counter()
result = stepchain.Executor(max_concurrent=int(sys.argv[2])).run(pipe, run_id="bench-llm")
run_s = time.perf_counter() - start
outputs = {r.step_id: r.output if r.status == "completed" else f"{r.status}: {r.error}"
           for r in result.steps.values()}
print(json.dumps({"import_s": t1 - t0, "run_s": run_s, "wall0": wall0, "outputs": outputs}))
"""

OLD_WORKER = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from stepchain import AsyncExecutor, Plan, Step
t1 = time.perf_counter()
spec = json.load(open(sys.argv[1]))
plan = Plan(goal="benchmark DAG", steps=[Step(**s) for s in spec])
wall0, start = time.time(), time.perf_counter()
results = asyncio.run(AsyncExecutor(max_concurrent=int(sys.argv[2])).execute_plan(plan, "bench-llm", resume=False))
run_s = time.perf_counter() - start
outputs = {r.step_id: r.content if r.status.value == "completed" else f"failed: {r.error}" for r in results}
print(json.dumps({"import_s": t1 - t0, "run_s": run_s, "wall0": wall0, "outputs": outputs}))
"""


def run_engine(name, argv, fake, dag, cap, extra_env, report, judged=True, baseline=None) -> float | None:
    fake.reset()
    env = dict(os.environ, **fake.env("test-key"), **extra_env)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        report.note(f"{name}: failed: no answer within 300 s")
        return None
    if done.returncode != 0:
        report.note(f"{name}: failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
        return None
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    applied, arrived, problems = {}, {}, []
    parents = dict(dag)
    for req in fake.requests_to("/v1/responses"):
        found = STEP_RE.search(req.text)
        sid = found.group(1) if found else "?"
        if sid in applied:
            problems.append(f"{sid} asked twice")
        applied[sid] = req.reply.delay if req.reply else 0.0
        arrived[sid] = req.received_at
        problems += [f"{sid} lacks {p}'s output" for p in parents.get(sid, []) if answer(p) not in req.text]
    problems += [f"{sid}: {out}" for sid, out in doc["outputs"].items() if out != answer(sid)]
    problems += [f"{sid} never asked" for sid in parents if sid not in applied]
    if not arrived:
        report.note(f"{name}: failed: the server got no request; {problems[:3]}")
        return None
    finish = {}
    for sid, ps in dag:  # the critical path of the applied latencies
        finish[sid] = max((finish[p] for p in ps), default=0.0) + applied.get(sid, 0.0)
    bound = max(finish.values())
    starts = {s: f - applied.get(s, 0.0) for s, f in finish.items()}
    peak = max(sum(starts[s] <= t < f for s, f in finish.items()) for t in starts.values())
    makespan = doc["run_s"]
    answered = {sid: arrived[sid] + applied[sid] for sid in arrived}
    gaps = [arrived[s] - max(answered[p] for p in ps) for s, ps in dag
            if ps and s in arrived and all(p in answered for p in ps)] or [0.0]
    lead, tail = min(arrived.values()) - doc["wall0"], doc["wall0"] + makespan - max(answered.values())
    report.row(f"{name}: makespan / critical-path bound",
               f"{makespan:.2f} s / {bound:.2f} s = {makespan / bound:.3f}×, "
               f"{fake.max_in_flight} requests in flight at most"
               + (f"; {makespan / baseline:.2f}× the makespan of this checkout" if baseline else ""),
               "≤ 1.03×" if judged else "", (makespan <= 1.03 * bound and not problems) if judged else None)
    report.note(f"{name}: importing the engine and the SDK {doc['import_s']:.2f} s (before the run); "
                f"the bound's own schedule needs {peak} requests at once (cap {cap}); "
                f"run call -> first request {lead * 1000:.0f} ms, last answer -> return {tail * 1000:.0f} ms, "
                f"last dependency answered -> request sent {sum(gaps) / len(gaps) * 1000:.0f} ms on average "
                f"(max {max(gaps) * 1000:.0f} ms)"
                + (f"; PROBLEMS: {'; '.join(problems[:4])}" if problems else "; every request "
                   "carried its dependencies' outputs, every step got its own answer"))
    return makespan


def main() -> None:
    args = arguments(__doc__, layers=6, width=10, max_concurrent=16, skip_old=False)
    sys.path.insert(0, str(REPO))
    from tests.support.fake_openai import FakeOpenAI, Reply, request_text

    dag = make_dag(args.layers, args.width)
    latency = {sid: round(random.Random(f"{SEED}:{sid}").uniform(0.7, 1.3), 3) for sid, _ in dag}

    def responder(body):
        found = STEP_RE.search(request_text(body))
        if found:
            return Reply.text(answer(found.group(1)), input_tokens=40, output_tokens=8).with_delay(
                latency[found.group(1)])
        return None

    n = len(dag)
    report = Report(f"LLM DAG: {args.layers} layers × {args.width} prompt steps, 1 s ± 30 % per request",
                    f"{n} steps, each reading 1-3 of the layer before; test server on 127.0.0.1, "
                    f"seeded latencies; --max-concurrent {args.max_concurrent}; cold cache")
    folder = work_dir("llm")
    (folder / "dag.yaml").write_text(pipeline_yaml(dag), encoding="utf-8")
    (folder / "worker.py").write_text(NEW_WORKER, encoding="utf-8")
    (folder / "plan.json").write_text(json.dumps(
        [{"id": sid, "prompt": headline(sid), "dependencies": ps} for sid, ps in dag]))
    (folder / "old_worker.py").write_text(OLD_WORKER, encoding="utf-8")
    with FakeOpenAI(responder=responder, keep_alive=True) as fake:
        ours = run_engine("StepChain (this checkout)",
                   [sys.executable, str(folder / "worker.py"), str(folder / "dag.yaml"), str(args.max_concurrent)],
                   fake, dag, args.max_concurrent, {"STEPCHAIN_HOME": str(fresh_home())}, report)
        if args.skip_old:
            report.note("StepChain 0.3.1: skipped (--skip-old)")
        else:
            py312 = find_python("3.12")
            python, how = tool_python("stepchain-0.3.1", ["stepchain==0.3.1"], py312) if py312 else (
                None, "no Python 3.12 found (0.3.1 requires it)")
            if python is None:
                report.note(f"StepChain 0.3.1: skipped, {how}")
            else:
                run_engine("StepChain 0.3.1 (PyPI)",
                           [python, str(folder / "old_worker.py"), str(folder / "plan.json"), str(args.max_concurrent)],
                           fake, dag, args.max_concurrent,
                           {"STEPCHAIN_STORAGE_PATH": str(fresh_home()), "STEPCHAIN_LOG_LEVEL": "ERROR"}, report,
                           judged=False, baseline=ours)  # the target is this checkout's
    report.save(args.json)


if __name__ == "__main__":
    main()
