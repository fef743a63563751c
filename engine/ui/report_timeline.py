"""The report's timeline: a row per step on one time axis, its attempts and waits drawn inside."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from stepchain.ui.report_data import RunReport, StepView, seconds
from stepchain.ui.report_svg import state_of


def timeline_html(report: RunReport) -> str:
    """A grid: the step's label, then its track (queued, each attempt, each wait between)."""
    start, total = report.started, report.duration_s or 0.0
    rows = []
    for i, view in enumerate(report.steps):
        r = view.result
        label = view.step_id + (f" ×{view.items}" if view.items is not None else "")
        if r.attempts > 1:
            label += f" ({r.attempts} attempts)"
        rows.append(f'<div class="label" data-step="s{i}">{escape(label)}</div>')
        if start and r.started_at and total > 0:
            bars = _bars(view, start, total)
            rows.append(f'<div class="track" data-step="s{i}">{bars}</div>')
        else:
            what = escape(r.reason or state_of(view))
            rows.append(
                f'<div class="track" data-step="s{i}"><span class="mark">{what}</span></div>'
            )
    axis = (
        '<div class="label muted">0s</div><div class="axis muted">'
        f"<span>{escape(report.state.started_at[11:19])} UTC</span>"
        f"<span>{escape(seconds(report.duration_s))}</span></div>"
    )
    return f'<div id="timeline">{axis}{"".join(rows)}</div>'


def _bars(view: StepView, start: datetime, total: float) -> str:
    r = view.result
    assert r.started_at is not None
    end = r.completed_at
    segments: list[tuple[str, datetime, datetime | None, str]] = []
    tries = r.tries
    if not tries:
        tip = f"{view.step_id}: {state_of(view)}, {seconds(r.duration_s)}"
        segments.append((state_of(view), r.started_at, end, tip))
    else:
        first = _parse(tries[0]["started_at"])
        segments.append(("queued", r.started_at, first, f"{view.step_id}: queued"))
        for n, attempt in enumerate(tries, 1):
            began, ended = _parse(attempt["started_at"]), _parse(attempt["finished_at"])
            state = attempt.get("status", "completed")
            tip = f"{view.step_id} attempt {n}: {state}, {seconds(_span(began, ended))}"
            if attempt.get("error"):
                tip += f": {attempt['error']}"
            segments.append((state, began, ended, tip))
            if n < len(tries):
                segments.append(
                    (
                        "waiting",
                        ended,
                        _parse(tries[n]["started_at"]),
                        f"{view.step_id}: {waiting(attempt)}",
                    )
                )
    return "".join(_bar(state, a, b, start, total, tip) for state, a, b, tip in segments)


def _bar(
    state: str, began: datetime, ended: datetime | None, start: datetime, total: float, tip: str
) -> str:
    left = _share(began, start, total)
    right = _share(ended, start, total) if ended else 100.0
    return (
        f'<div class="bar s-{state}" style="left:{left:.3f}%;width:{max(right - left, 0.2):.3f}%" '
        f'title="{escape(tip)}"></div>'
    )


def waiting(attempt: dict[str, Any]) -> str:
    """Why and how long a step waited after a failed attempt."""
    error = attempt.get("error") or ""
    why = "a rate limit" if "rate limit" in error else attempt.get("wait", "a retry")
    return f"waiting {attempt.get('wait_s', 0):g}s for {why}"


def tries_table(tries: list[dict[str, Any]]) -> str:
    """Each attempt: when, how long, how it ended, and the wait that followed."""
    rows = []
    for n, attempt in enumerate(tries, 1):
        began, ended = _parse(attempt["started_at"]), _parse(attempt["finished_at"])
        after = waiting(attempt) if "wait_s" in attempt else ""
        rows.append(
            f"<tr><td>{n}</td><td>{escape(attempt['started_at'])}</td>"
            f"<td>{seconds(_span(began, ended))}</td><td>{escape(attempt.get('status', ''))}</td>"
            f"<td>{escape(attempt.get('error', ''))}</td><td>{escape(after)}</td></tr>"
        )
    head = (
        "<tr><th>#</th><th>started</th><th>took</th><th>status</th><th>error</th><th>then</th></tr>"
    )
    return f'<table class="tries">{head}{"".join(rows)}</table>'


def _share(moment: datetime, start: datetime, total: float) -> float:
    return min(100.0, max(0.0, (moment - start).total_seconds() / total * 100))


def _span(began: datetime, ended: datetime) -> float:
    return (ended - began).total_seconds()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)
