"""A large fan-out against a rate-limited server: every item, near the time the limit allows.

    python benchmarks/bench_rate_limits.py [--items 300] [--rpm 3000] [--tpm 6000000]
        [--latency 0.1] [--max-concurrent 32]

A `foreach` of `prompt` steps over N items against the test server (tests/support/fake_openai.py,
real HTTP on 127.0.0.1, keep-alive) with request and token buckets per model that answer as
OpenAI does: `x-ratelimit-*` headers on every answer, 429 with `retry-after-ms`/`Retry-After`
over the limit (tests/support/rate_buckets.py, one second's worth per bucket). Each answer takes
`--latency` seconds. StepChain runs in a fresh process through the stock OpenAI SDK with no
declared limits (it learns them from the headers): `Executor(max_concurrent=N).execute(...)`,
cold cache. Makespan = wall time of that call. Bound = the time the limit allows for the N
requests (N / rpm per minute; for tokens, their total / tpm per minute). Targets: every item
completes, makespan <= 1.10 x bound, 429 answers <= 5 % of requests. Two workloads: requests per
minute with short prompts, and tokens per minute with prompts of about 2,000 tokens.

StepChain 0.3.1 (PyPI, Python 3.12, own venv under benchmarks/_work/venvs/) runs the same items
on the same server, side by side: a `Plan` of N independent `Step(id, prompt)` with
`AsyncExecutor(max_concurrent=N).execute_plan(...)` (its own retries and backoff on 429s); skipped,
with the reason, if that cannot be installed or run (`--skip-old` skips it).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Report, arguments, find_python, fresh_home, tool_python, work_dir

WORKER = """import json, sys, time
import openai, stepchain
from stepchain import Executor
pipe = stepchain.load_pipeline(sys.argv[1])
start = time.perf_counter()
results = Executor(max_concurrent=int(sys.argv[2])).execute(pipe, run_id='x')
run_s = time.perf_counter() - start
step = results[0]
print(json.dumps({"run_s": run_s, "status": step.status, "error": step.error,
                  "outputs": step.output or []}))
"""


OLD_WORKER = """import asyncio, json, sys, time
from stepchain import AsyncExecutor, Plan, Step
items = json.load(open(sys.argv[1]))
plan = Plan(goal='benchmark', steps=[Step(**s) for s in items])
start = time.perf_counter()
results = asyncio.run(AsyncExecutor(max_concurrent=int(sys.argv[2])).execute_plan(plan, 'x',
                                                                                 resume=False))
run_s = time.perf_counter() - start
by_id = {r.step_id: r for r in results}
done = [by_id.get(s['id']) for s in items]
ok = all(r is not None and r.status.value == 'completed' for r in done)
failed = [r for r in done if r is not None and r.status.value != 'completed']
error = f"{len(failed)} failed, e.g. {failed[0].error}" if failed else None
print(json.dumps({"run_s": run_s, "status": "completed" if ok else "failed", "error": error,
                  "outputs": [r.content if r is not None else None for r in done]}))
"""
ITEM = re.compile(r"Item (\d+)\.")


def pipeline_yaml(items: int, filler: str) -> str:
    return (
        "version: 1\nname: bench-rate-limits\ndefaults: {model: gpt-4o-mini}\nsteps:\n"
        "  - id: each\n"
        f'    foreach: "range({items}) | list"\n'
        f'    prompt: "Item {{{{ item }}}}.{filler}"\n'
        "    max_output_tokens: 16\n"
    )


def measure(argv: list[str], env: dict, fake) -> dict | str:
    """Run one engine's worker; its figures and what the server saw (a string: why it failed)."""
    fake.reset()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        return "no answer within 300 s"
    if done.returncode != 0:
        return f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    answered = [r for r in fake.requests if r.reply is not None and r.reply.status == 200]
    limited = [r for r in fake.requests if r.reply is not None and r.reply.status == 429]
    good = sum(1 for i, out in enumerate(doc["outputs"]) if out == f"answer {i}")
    return {
        "makespan": doc["run_s"],
        "completed": good,
        "error": doc["error"],
        "requests": len(fake.requests),
        "answered": len(answered),
        "limited": len(limited),
        "tokens": sum(r.reply.input_tokens + 16 for r in answered if r.reply is not None),
        "in_flight": fake.max_in_flight,
    }


def record(report: Report, name: str, m: dict, items: int, bound: float, old: bool) -> None:
    """This checkout's rows carry the targets; 0.3.1's are shown beside them, without."""
    report.row(
        f"{name}: items completed",
        f"{m['completed']} / {items}" + (f" ({m['error'][:160]})" if m["error"] else ""),
        "" if old else f"{items} / {items}",
        None if old else m["completed"] == items,
    )
    report.row(
        f"{name}: makespan / limit bound",
        f"{m['makespan']:.2f} s / {bound:.2f} s = {m['makespan'] / bound:.3f}×, "
        f"{m['in_flight']} requests in flight at most",
        "" if old else "≤ 1.10×",
        None if old else m["makespan"] <= 1.10 * bound,
    )
    share = m["limited"] / max(1, m["requests"])
    report.row(
        f"{name}: 429 answers / requests",
        f"{m['limited']} / {m['requests']} = {share:.1%}",
        "" if old else "≤ 5 %",
        None if old else share <= 0.05,
    )


def main() -> None:
    args = arguments(
        __doc__, items=300, rpm=3000, tpm=6_000_000, latency=0.1, max_concurrent=32, skip_old=False
    )
    sys.path.insert(0, str(REPO))
    from tests.support.fake_openai import FakeOpenAI, Reply, request_text

    def responder(body):
        text = request_text(body)
        found = ITEM.search(text)
        index = found.group(1) if found else "?"
        reply = Reply.text(f"answer {index}", input_tokens=math.ceil(len(text) / 4))
        return reply.with_delay(args.latency)

    report = Report(
        f"Rate limits: {args.items}-item foreach at {args.rpm:g} requests/min, "
        f"{args.latency * 1000:.0f} ms latency",
        f"test server with OpenAI-style request and token buckets on 127.0.0.1; "
        f"--max-concurrent {args.max_concurrent}; no declared limits; cold cache",
    )
    folder = work_dir("rate_limits")
    (folder / "worker.py").write_text(WORKER, encoding="utf-8")
    (folder / "old_worker.py").write_text(OLD_WORKER, encoding="utf-8")
    old_python, how = (None, "skipped (--skip-old)") if args.skip_old else (
        tool_python("stepchain-0.3.1", ["stepchain==0.3.1"], py312)
        if (py312 := find_python("3.12")) else (None, "no Python 3.12 found (0.3.1 requires it)"))  # fmt: skip
    workloads = [
        ("requests/min", "", {"rpm": args.rpm}),
        ("tokens/min, ~2,000-token prompts", " " + "lorem ipsum " * 666, {"tpm": args.tpm}),
    ]
    cap = str(args.max_concurrent)
    for name, filler, limits in workloads:
        (folder / "fanout.yaml").write_text(pipeline_yaml(args.items, filler), encoding="utf-8")
        items = [{"id": f"item{i}", "prompt": f"Item {i}.{filler}"} for i in range(args.items)]
        (folder / "plan.json").write_text(json.dumps(items), encoding="utf-8")
        engines = [("", [sys.executable, str(folder / "worker.py"), str(folder / "fanout.yaml")])]
        if old_python:
            old_argv = [old_python, str(folder / "old_worker.py"), str(folder / "plan.json")]
            engines.append(("StepChain 0.3.1 (PyPI), ", old_argv))
        for engine, argv in engines:
            with FakeOpenAI(responder=responder, keep_alive=True, **limits) as fake:
                home = str(fresh_home())
                env = dict(os.environ, **fake.env("test-key"), STEPCHAIN_HOME=home,
                           STEPCHAIN_STORAGE_PATH=home)  # fmt: skip
                m = measure([*argv, cap], env, fake)
            if isinstance(m, str):
                report.note(f"{engine}{name}: failed, {m}")
                continue
            if "rpm" in limits:
                bound = args.items / (args.rpm / 60)
            else:
                bound = m["tokens"] / (args.tpm / 60)
            record(report, f"{engine}{name}", m, args.items, bound, old=bool(engine))
    if not old_python:
        report.note(f"StepChain 0.3.1: not measured, {how}")
    report.save(args.json)


if __name__ == "__main__":
    main()
