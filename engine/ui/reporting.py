"""Text for people: problems in three formats, plans, run lists. No click here."""

from __future__ import annotations

import json
from typing import Any

from stepchain.errors import Problem
from stepchain.pipeline.consent import Runnable
from stepchain.run.database import RunState
from stepchain.run.plan import Plan


def format_problems(problems: list[Problem], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(
            {"valid": not problems, "problems": [p.as_dict() for p in problems]}, indent=2
        )
    if fmt == "github":
        return "\n".join(
            f"::error file={p.file},line={p.line},col={p.col}::{_github_escape(_message(p))}"
            for p in problems
        )
    return "\n".join(p.format() for p in problems)


def _message(problem: Problem) -> str:
    return f"{problem.path}: {problem.message}" if problem.path else problem.message


def _github_escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def format_plan(plan: Plan) -> str:
    lines = [f"pipeline {plan.pipeline}: {len(plan.steps)} steps in {len(plan.layers)} layers", ""]
    for i, layer in enumerate(plan.layers):
        lines.append(f"layer {i}: {', '.join(layer)}")
    lines += ["", f"critical path: {' -> '.join(plan.critical_path)}", ""]
    width = max((len(s.step_id) for s in plan.steps), default=4)
    counts: dict[str, int] = {}
    for s in plan.steps:
        counts[s.action] = counts.get(s.action, 0) + 1
        detail = f"  ({s.detail})" if s.detail else ""
        where = f"  [{s.where}]" if s.where else ""
        lines.append(f"  {s.action:<8} {s.step_id:<{width}}  {s.kind}{where}{detail}")
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    lines += ["", f"plan: {summary}"]
    return "\n".join(lines + format_runnables(plan.runs))


def format_runnables(runs: list[Runnable]) -> list[str]:
    """What a pipeline would start or import, and which of it needs consent."""
    if not runs:
        return []
    lines = ["", "runs programs or code:"]
    for r in runs:
        note = (
            "needs consent"
            if r.needs_consent
            else "a trusted package"
            if r.trusted_package
            else "in the pipeline's folder"
        )
        lines.append(f"  {r.describe()}  [{note}]")
    return lines


def format_runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs recorded yet"
    header = f"{'RUN ID':<44} {'PIPELINE':<20} {'STATUS':<12} {'DONE':<9} STARTED"
    rows = [
        f"{r['run_id']:<44} {r['pipeline']:<20} {r['status']:<12} "
        f"{str(r['completed']) + '/' + str(r.get('total', r['recorded'])):<9} "
        f"{r['started_at'][:19]}"
        + (f"  (resume: stepchain resume {r['run_id']})" if r.get("resumable") else "")
        for r in runs
    ]
    return "\n".join([header, *rows])


def format_run(state: RunState) -> str:
    lines = [
        f"run       {state.run_id}",
        f"pipeline  {state.pipeline_name} ({state.pipeline_path or 'no file'}) sha256:{state.pipeline_hash[:12]}",
        f"status    {state.status}",
        f"started   {state.started_at}",
        f"finished  {state.finished_at or '-'}",
        f"inputs    {json.dumps(state.inputs)}",
        f"usage     {json.dumps(state.usage)}",
        "",
    ]
    for r in state.results:
        tokens = r.usage.get("total_tokens", "")
        extra = r.error or r.reason or ""
        cached = "cached" if r.cached else ""
        seconds = f"{r.duration_s:.2f}s" if r.duration_s is not None else ""
        lines.append(
            f"  {r.step_id:<24} {r.status:<11} {cached:<6} attempts={r.attempts} "
            f"tokens={tokens} {seconds} {extra}".rstrip()
        )
    if state.outputs:
        lines += ["", "outputs:"] + [f"  {k}: {_short(v)}" for k, v in state.outputs.items()]
    return "\n".join(lines)


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
