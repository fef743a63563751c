"""The report's timeline: a row per step on one time axis, its attempts and waits drawn inside.

A try is drawn in its end state (completed or failed), cut by its waits for a rate limit
(`ratelimit`); the time before the first try is `queued` (for a concurrency slot) and the time
between tries `waiting` (a retry's backoff or Retry-After). A `foreach` step is one row with its
item count; a toggle unfolds a row per item, drawn the same way.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from stepchain.ui.report_data import RunReport, StepView, seconds
from stepchain.ui.report_svg import state_of

ITEM_ROWS = 200  # item rows unfolded under one foreach step, at most
ITEM_ROWS_TOTAL = 2000  # item rows in the whole report, at most (a 2,000-step run stays small)
TIP_ERROR = 300  # characters of an attempt's error in its tooltip (the details have it all)

Segment = tuple[str, datetime, datetime | None, str]  # (state, from, to, tooltip)


def timeline_html(report: RunReport) -> str:
    """A grid: the step's label, then its track (queued, each attempt, each wait between)."""
    start, total = report.started, report.duration_s or 0.0
    budget = ITEM_ROWS_TOTAL
    rows = []
    for i, view in enumerate(report.steps):
        r = view.result
        label = view.step_id + (f" ×{view.items}" if view.items is not None else "")
        if r.attempts > 1:
            label += f" ({r.attempts} attempts)"
        items = r.item_tries if r.item_tries and start and total > 0 else None
        fold = (
            f'<button type="button" class="fold" data-fold="s{i}" aria-expanded="false" '
            f'title="show each item">▸</button>'
            if items
            else ""
        )
        rows.append(f'<div class="label" data-step="s{i}">{fold}{escape(label)}</div>')
        if start and view.since and total > 0:  # running now: from when it could start
            tip = f"{view.step_id}: {r.reason}"
            bar = _bar("running", view.since, None, tip, start, total)
            rows.append(f'<div class="track" data-step="s{i}">{bar}</div>')
        elif start and r.started_at and total > 0:
            bars = "".join(_bar(*segment, start, total) for segment in _step_segments(view))
            rows.append(f'<div class="track" data-step="s{i}">{bars}</div>')
        else:
            what = escape(r.reason or state_of(view))
            rows.append(
                f'<div class="track" data-step="s{i}"><span class="mark">{what}</span></div>'
            )
        if items and start:
            shown = min(len(items), ITEM_ROWS, budget)
            budget -= shown
            rows += _item_rows(i, view, items[:shown], start, total)
            if shown < len(items):
                rows.append(
                    f'<div class="label item muted" data-parent="s{i}" hidden>'
                    f"and {len(items) - shown:,} more items</div>"
                    f'<div class="track item" data-parent="s{i}" hidden></div>'
                )
    axis = (
        '<div class="label muted">0s</div><div class="axis muted">'
        f"<span>{escape(report.state.started_at[11:19])} UTC</span>"
        f"<span>{escape(seconds(report.duration_s))}</span></div>"
    )
    return f'<div id="timeline">{axis}{"".join(rows)}</div>'


def _step_segments(view: StepView) -> list[Segment]:
    r = view.result
    assert r.started_at is not None
    if not r.tries:
        tip = f"{view.step_id}: {state_of(view)}, {seconds(r.duration_s)}"
        return [(state_of(view), r.started_at, r.completed_at, tip)]
    return tries_segments(view.step_id, r.started_at, r.tries)


def _item_rows(
    i: int, view: StepView, items: list[list[dict[str, Any]]], start: datetime, total: float
) -> list[str]:
    r = view.result
    assert r.started_at is not None
    rows = []
    for n, tries in enumerate(items):
        name = f"{view.step_id}[{n}]"
        if tries:
            segments = tries_segments(name, r.started_at, tries)
            took = _span(_parse(tries[0]["started_at"]), _parse(tries[-1]["finished_at"]))
            note = f" · {tries[-1].get('status', '')} · {seconds(took)}"
            note += f" ({len(tries)} attempts)" if len(tries) > 1 else ""
        else:  # from the cache: no try, it was there when the step began
            segments = [("cached", r.started_at, r.started_at, f"{name}: cached")]
            note = " (cached)"
        bars = "".join(_bar(*segment, start, total) for segment in segments)
        rows.append(
            f'<div class="label item" data-parent="s{i}" hidden>item {n}{escape(note)}</div>'
            f'<div class="track item" data-parent="s{i}" hidden>{bars}</div>'
        )
    return rows


def tries_segments(name: str, queued_from: datetime, tries: list[dict[str, Any]]) -> list[Segment]:
    """Queued until the first try, each try cut by its rate-limit waits, the waits between."""
    first = _parse(tries[0]["started_at"])
    segments: list[Segment] = [("queued", queued_from, first, f"{name}: queued")]
    for n, attempt in enumerate(tries, 1):
        began, ended = _parse(attempt["started_at"]), _parse(attempt["finished_at"])
        state = attempt.get("status", "completed")
        tip = f"{name} attempt {n}: {state}, {seconds(_span(began, ended))}"
        if attempt.get("error"):
            tip += f": {str(attempt['error'])[:TIP_ERROR]}"
        at = began
        for wait in attempt.get("waits") or []:
            w_from, w_to = _parse(wait["started_at"]), _parse(wait["finished_at"])
            if w_from > at:
                segments.append((state, at, w_from, tip))
            why = f"{name} attempt {n}: waiting {seconds(_span(w_from, w_to))} for the rate "
            segments.append(("ratelimit", w_from, w_to, why + f"limit of {wait.get('limiter')}"))
            at = max(at, w_to)
        if ended > at or at == began:
            segments.append((state, at, ended, tip))
        if n < len(tries):
            after = _parse(tries[n]["started_at"])
            segments.append(("waiting", ended, after, f"{name}: {waiting(attempt)}"))
    return segments


def _bar(
    state: str, began: datetime, ended: datetime | None, tip: str, start: datetime, total: float
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


def rate_limit_waits(attempt: dict[str, Any]) -> str:
    """The waits for a rate limit within one attempt, in a few words."""
    waits = attempt.get("waits") or []
    if not waits:
        return ""
    spent = sum(_span(_parse(w["started_at"]), _parse(w["finished_at"])) for w in waits)
    count = len(waits) + sum(w.get("more", 0) for w in waits)
    limiters = ", ".join(sorted({str(w.get("limiter")) for w in waits}))
    return f"{count} × {seconds(spent)} for the rate limit of {limiters}"


def tries_table(tries: list[dict[str, Any]]) -> str:
    """Each attempt: when, how long, how it ended, its rate-limit waits, the wait that followed."""
    rows = []
    for n, attempt in enumerate(tries, 1):
        began, ended = _parse(attempt["started_at"]), _parse(attempt["finished_at"])
        after = waiting(attempt) if "wait_s" in attempt else ""
        rows.append(
            f"<tr><td>{n}</td><td>{escape(attempt['started_at'])}</td>"
            f"<td>{seconds(_span(began, ended))}</td><td>{escape(attempt.get('status', ''))}</td>"
            f"<td>{escape(rate_limit_waits(attempt))}</td>"
            f"<td>{escape(attempt.get('error', ''))}</td><td>{escape(after)}</td></tr>"
        )
    head = (
        "<tr><th>#</th><th>started</th><th>took</th><th>status</th><th>waited (rate limit)</th>"
        "<th>error</th><th>then</th></tr>"
    )
    return f'<table class="tries">{head}{"".join(rows)}</table>'


def _share(moment: datetime, start: datetime, total: float) -> float:
    return min(100.0, max(0.0, (moment - start).total_seconds() / total * 100))


def _span(began: datetime, ended: datetime) -> float:
    return (ended - began).total_seconds()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value)
