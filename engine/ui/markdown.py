"""`stepchain plan --format markdown`: a plan as a pull-request comment (GitHub markdown)."""

from __future__ import annotations

import json
from typing import Any

from stepchain.pipeline import graph as graphs
from stepchain.pipeline.definition import Pipeline
from stepchain.run.lock import Change
from stepchain.run.plan import Plan
from stepchain.ui.reporting import format_plan

_CALLS = {"prompt": "LLM call", "tool": "tool call", "run": "command"}
_WILL_CALL = ("run", "unknown")


def render_plan(
    pipeline: Pipeline,
    plan: Plan,
    fmt: str,
    changes: list[Change] | None = None,
    lock: dict[str, Any] | None = None,
    lock_name: str | None = None,
) -> str:
    """A plan (and what changed against a lock) as text, JSON or a markdown comment."""
    if fmt == "markdown":
        g = graphs.build_graph({s.id: s.needs for s in pipeline.steps})
        mermaid = graphs.to_mermaid(g, [s.id for s in pipeline.steps])
        return format_plan_markdown(plan, mermaid, changes, lock, lock_name)
    if fmt == "json":
        doc = plan.to_dict()
        if changes is not None:
            doc["changed"] = {c.step_id: c.reasons for c in changes}
        return json.dumps(doc, indent=2) + "\n"
    text = format_plan(plan)
    if changes is not None:
        where = lock_name or "the lock"
        text += f"\n\nchanged against {where}: " + (
            "; ".join(f"{c.step_id} ({', '.join(c.reasons)})" for c in changes) or "nothing"
        )
    return text + "\n"


def format_plan_markdown(
    plan: Plan,
    mermaid: str,
    changes: list[Change] | None = None,
    lock: dict[str, Any] | None = None,
    lock_name: str | None = None,
) -> str:
    """The comment: summary, estimate, what changed against the lock and why, steps, graph."""
    changed = {c.step_id: c.reasons for c in changes or []}
    counts: dict[str, int] = {}
    for s in plan.steps:
        counts[s.action] = counts.get(s.action, 0) + 1
    summary = " · ".join(f"{action} {n}" for action, n in sorted(counts.items()))
    lines = [
        f"## StepChain plan: `{plan.pipeline}`",
        "",
        f"**{len(plan.steps)} steps in {len(plan.layers)} layers** · {summary}",
        "",
        _estimate(plan, lock),
        "",
    ]
    if changes is not None:
        lines += _changes(changes, lock_name)
    lines += ["### Steps", "", "| layer | step | kind | action | changed | note |"]
    lines += ["|---:|---|---|---|---|---|"]
    for s in plan.steps:
        why = ", ".join(changed.get(s.step_id, [])) or ""
        note = _cell("; ".join(n for n in (s.where, s.detail) if n))
        lines.append(
            f"| {s.layer} | `{s.step_id}` | {s.kind} | **{s.action}** | {_cell(why)} | {note} |"
        )
    lines += ["", "### Graph", "", "```mermaid", *_graph(plan, mermaid, set(changed)), "```", ""]
    return "\n".join(lines)


def _estimate(plan: Plan, lock: dict[str, Any] | None) -> str:
    """What a run would spend: calls by kind, tokens from the lock's recorded usage."""
    locked = (lock or {}).get("steps") or {}
    calls: dict[str, int] = {}
    tokens, unknown = 0, []
    for s in plan.steps:
        if s.action not in _WILL_CALL or s.kind not in _CALLS:
            continue
        found = locked.get(s.step_id)
        was: dict[str, Any] = found if isinstance(found, dict) else {}
        count = len(s.keys) or int(was.get("calls") or 1)
        calls[_CALLS[s.kind]] = calls.get(_CALLS[s.kind], 0) + count
        if s.kind == "prompt":
            used = (was.get("usage") or {}).get("total_tokens")
            if isinstance(used, int) and used:
                tokens += used
            else:
                unknown.append(s.step_id)
    if not calls:
        return (
            "**Estimated cost:** nothing to call — every step replays from the cache or is skipped."
        )
    parts = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(calls.items()))
    text = f"**Estimated cost:** {parts}; ~{tokens} tokens"
    if lock is None:
        return text + " (no lock given: pass `--against FILE.lock` to estimate tokens)"
    if unknown:
        text += f" (no recorded usage for {', '.join(f'`{u}`' for u in unknown)})"
    return text + " (from the lock's recorded usage)"


def _changes(changes: list[Change], lock_name: str | None) -> list[str]:
    where = f"`{lock_name}`" if lock_name else "the lock"
    if not changes:
        return [f"### Changed against {where}", "", "Nothing: every request matches the lock.", ""]
    lines = [f"### Changed against {where}", "", "| step | why |", "|---|---|"]
    lines += [f"| `{c.step_id}` | {_cell(', '.join(c.reasons))} |" for c in changes]
    return [*lines, ""]


def _graph(plan: Plan, mermaid: str, changed: set[str]) -> list[str]:
    lines = mermaid.rstrip("\n").splitlines()
    ids = {s.step_id: f"s{i}" for i, s in enumerate(plan.steps)}
    marked = [ids[step] for step in ids if step in changed]
    if marked:
        lines.append("    classDef changed fill:#fde68a,stroke:#b45309,stroke-width:2px")
        lines.append(f"    class {','.join(marked)} changed")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
