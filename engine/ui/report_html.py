"""The run report as one self-contained HTML file: inline CSS, JS and SVG, nothing fetched."""

from __future__ import annotations

import json
from html import escape

from stepchain.ui.report_data import RunReport, StepView, Text, as_text, seconds
from stepchain.ui.report_svg import graph_svg, state_of
from stepchain.ui.report_timeline import timeline_html, tries_table

ITEM_PREVIEW = 300  # characters of each foreach item shown in its row
ITEM_ROWS = 500  # foreach items listed one per row, at most

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2328;background:#fff}
header{padding:16px 24px;background:#f6f8fa;border-bottom:1px solid #d0d7de}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:24px 0 8px}
main{padding:0 24px 40px}
.facts{display:flex;flex-wrap:wrap;gap:6px 24px;margin:0}.facts div{display:flex;gap:6px}
.facts dt{color:#59636e}.facts dd{margin:0;font-weight:600}
.badge{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;font-weight:600}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;border-radius:6px;margin:8px 0}
.scroll{overflow:auto;max-height:70vh;border:1px solid #d0d7de;border-radius:6px}
#graph .edge{fill:none;stroke:#8c959f;stroke-width:1.2}
#graph .node{cursor:pointer}#graph .node rect{stroke:#1f2328;stroke-width:.6}
#graph .node text{font:12px ui-monospace,monospace;fill:#fff;pointer-events:none}
.s-completed,.s-completed rect{background:#1a7f37;fill:#1a7f37}
.s-cached,.s-cached rect{background:#0969da;fill:#0969da}
.s-failed,.s-failed rect{background:#cf222e;fill:#cf222e}
.s-skipped,.s-skipped rect{background:#8c959f;fill:#8c959f}
.s-interrupted,.s-interrupted rect{background:#bc4c00;fill:#bc4c00}
.s-pending,.s-pending rect{background:#bf8700;fill:#bf8700}
.s-running,.s-running rect{background:#4ac26b;fill:#4ac26b}
.s-queued{background:repeating-linear-gradient(45deg,#d0d7de 0 3px,#f6f8fa 3px 6px)}
.s-waiting{background:repeating-linear-gradient(45deg,#bf8700 0 3px,#fff8c5 3px 6px)}
.s-ratelimit{background:repeating-linear-gradient(45deg,#8250df 0 3px,#fbefff 3px 6px)}
#timeline{display:grid;grid-template-columns:minmax(120px,max-content) 1fr;gap:2px 8px;padding:8px}
#timeline .label{font:12px ui-monospace,monospace;white-space:nowrap;cursor:pointer}
#timeline .track{position:relative;height:16px;background:#f6f8fa;border-radius:3px}
#timeline .bar{position:absolute;top:2px;height:12px;min-width:3px;border-radius:3px}
#timeline .axis{display:flex;justify-content:space-between;font-size:11px}
#timeline .mark{position:absolute;top:0;font-size:11px;color:#59636e}
#timeline .label.item{padding-left:22px;color:#59636e}#timeline .track.item{height:12px}
#timeline .track.item .bar{top:1px;height:10px}
.fold{border:0;background:none;cursor:pointer;padding:0 4px 0 0;font:inherit}
.legend span{margin-right:12px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
details.step{border:1px solid #d0d7de;border-radius:6px;margin:6px 0;padding:4px 10px}
details.step>summary{cursor:pointer;font-family:ui-monospace,monospace}
details.step[open]{background:#fbfcfd}
pre{background:#f6f8fa;padding:8px;border-radius:6px;overflow:auto;max-height:24em;white-space:pre-wrap;word-break:break-word}
table{border-collapse:collapse}td,th{border:1px solid #d0d7de;padding:2px 8px;text-align:left;vertical-align:top}
.error{color:#cf222e}.muted{color:#59636e}
"""

JS = """
(function(){
  function show(id){
    var el=document.getElementById(id); if(!el) return;
    el.open=true; el.scrollIntoView({block:'start'});
  }
  document.querySelectorAll('[data-step]').forEach(function(el){
    el.addEventListener('click',function(){show(el.getAttribute('data-step'));});
    el.addEventListener('keydown',function(e){if(e.key==='Enter')show(el.getAttribute('data-step'));});
  });
  document.querySelectorAll('button.fold').forEach(function(b){
    b.addEventListener('click',function(e){
      e.stopPropagation();
      var open=b.getAttribute('aria-expanded')!=='true';
      b.setAttribute('aria-expanded',open?'true':'false');
      b.textContent=open?'\u25be':'\u25b8';
      var rows=document.querySelectorAll('[data-parent="'+b.getAttribute('data-fold')+'"]');
      rows.forEach(function(el){el.hidden=!open;});
    });
  });
  var all=document.getElementById('expand-all');
  if(all) all.addEventListener('click',function(){
    var open=all.getAttribute('data-open')!=='1';
    document.querySelectorAll('details.step').forEach(function(d){d.open=open;});
    all.setAttribute('data-open',open?'1':'0');
    all.textContent=open?'collapse all':'expand all';
  });
  if(location.hash) show(location.hash.slice(1));
})();
"""

STATES = {  # CSS class suffix: what the legend calls it
    "completed": "completed",
    "cached": "cached",
    "failed": "failed",
    "skipped": "skipped",
    "interrupted": "interrupted",
    "running": "running",
    "pending": "pending",
    "queued": "queued",
    "ratelimit": "waiting for a rate limit",
    "waiting": "waiting to retry",
}


def render_html(report: RunReport) -> str:
    state = report.state
    title = f"{state.pipeline_name} · {state.run_id}"
    body = [_header(report), "<main>"]
    body += [f'<p class="note">{escape(note)}</p>' for note in report.notes]
    if report.in_progress:
        body.append(
            '<p class="note" id="in-progress">This run is still in progress: the report shows '
            "what was recorded so far.</p>"
        )
    body += [
        "<h2>Dependency graph</h2>",
        _legend(),
        f'<div class="scroll">{graph_svg(report)}</div>',
        "<h2>Timeline</h2>",
        f'<div class="scroll">{timeline_html(report)}</div>',
        _changes(report),
        _inputs_outputs(report),
        '<h2>Steps <button id="expand-all" type="button">expand all</button></h2>',
        *(_step(i, view) for i, view in enumerate(report.steps)),
        "</main>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + f"<script>{JS}</script></body></html>\n"
    )


def _header(report: RunReport) -> str:
    state = report.state
    status = "running" if report.in_progress else state.status
    badge = {"completed": "completed", "running": "pending", "interrupted": "interrupted"}.get(
        status, "failed"
    )
    rate = report.cache_hit_rate
    facts = [
        ("pipeline", state.pipeline_name),
        ("run id", state.run_id),
        ("started", state.started_at[:19].replace("T", " ") + " UTC"),
        ("duration", seconds(report.duration_s)),
        ("total tokens", f"{report.total_tokens:,}"),
        ("cache hit rate", "-" if rate is None else f"{rate:.0%}"),
        ("steps", ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))),
    ]
    waits, waited = report.rate_limit_waits()
    if waits:
        facts.append(("rate-limit waits", f"{waits} ({seconds(waited)})"))
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in facts)
    error = f'<p class="error">{escape(state.error)}</p>' if state.error else ""
    return (
        f"<header><h1>{escape(state.pipeline_name)} "
        f'<span class="badge s-{badge}" id="status">{escape(status)}</span></h1>'
        f'<dl class="facts">{items}</dl>{error}</header>'
    )


def _legend() -> str:
    keys = "".join(f'<span><i class="s-{s}"></i>{name}</span>' for s, name in STATES.items())
    return f'<p class="legend">{keys}</p>'


def _changes(report: RunReport) -> str:
    if report.previous_run is None:
        return "<h2>Changes</h2><p class='muted'>No earlier run of this pipeline is recorded.</p>"
    rows = "".join(
        f"<tr><td>{escape(change)}</td><td>{n}</td></tr>"
        for change, n in sorted(report.changes().items())
    )
    changed = [v.step_id for v in report.steps if "changed" in v.change or "new" in v.change]
    detail = (
        f"<p>Steps whose request changed or that are new: {escape(', '.join(changed))}</p>"
        if changed
        else ""
    )
    return (
        f"<h2>Changes against {escape(report.previous_run)}</h2>"
        f'<table id="changes"><tr><th>this run</th><th>steps</th></tr>{rows}</table>{detail}'
    )


def _inputs_outputs(report: RunReport) -> str:
    state = report.state
    parts = ["<h2>Inputs</h2>", _pre(as_text(state.inputs))]
    if state.outputs:
        parts += ["<h2>Outputs</h2>", _pre(as_text(state.outputs))]
    return "".join(parts)


def _step(i: int, view: StepView) -> str:
    r = view.result
    tokens = r.usage.get("total_tokens")
    summary = " · ".join(
        part
        for part in (
            f"<b>{escape(view.step_id)}</b>",
            escape(view.kind),
            f'<span class="badge s-{state_of(view)}">{escape(state_of(view))}</span>',
            f"{view.items} items" if view.items is not None else "",
            f"attempts {r.attempts}",
            seconds(r.duration_s),
            f"{tokens:,} tokens" if tokens else "",
            escape(view.change),
        )
        if part
    )
    body = []
    if view.request is not None:
        body += ["<h4>Request, rendered</h4>", _pre(view.request)]
    elif view.definition is not None:
        what = "Template" if view.kind == "template" else "Request (not recorded rendered)"
        body += [f"<h4>{what}, as written in the pipeline</h4>", _pre(view.definition)]
    if view.needs:
        body.append(f"<p>needs: {escape(', '.join(view.needs))}</p>")
    if r.error:
        body.append(f'<h4>Error</h4><pre class="error">{escape(r.error, quote=False)}</pre>')
    if r.reason:
        body.append(f"<p>reason: {escape(r.reason)}</p>")
    if view.output is not None:
        body += ["<h4>Output</h4>", _items(r.output) if view.items else "", _pre(view.output)]
    if r.tries:
        body += ["<h4>Attempts</h4>", tries_table(r.tries)]
    if r.usage:
        body += ["<h4>Usage</h4>", _pre(as_text(r.usage))]
    times = f"started {r.started_at or '-'} · finished {r.completed_at or '-'}"
    body.append(f'<p class="muted">{escape(times)} · cache key {escape(r.cache_key or "-")}</p>')
    return f'<details class="step" id="s{i}"><summary>{summary}</summary>{"".join(body)}</details>'


def _items(output: object) -> str:
    if not isinstance(output, list):
        return ""
    rows = "".join(
        f"<tr><td>{n}</td><td>{escape(_preview(item))}</td></tr>"
        for n, item in enumerate(output[:ITEM_ROWS])
    )
    more = (
        f"<p class='muted'>and {len(output) - ITEM_ROWS} more</p>"
        if len(output) > ITEM_ROWS
        else ""
    )
    return f"<details><summary>{len(output)} items</summary><table>{rows}</table>{more}</details>"


def _preview(item: object) -> str:
    text = item if isinstance(item, str) else json.dumps(item, default=str)
    return text if len(text) <= ITEM_PREVIEW else text[:ITEM_PREVIEW] + "…"


def _pre(text: Text) -> str:
    cut = ""
    if text.truncated:
        cut = (
            f'<p class="note truncated">truncated: showing {len(text.text):,} of '
            f"{text.size:,} characters ({size_label(text.size)})</p>"
        )
    return f"{cut}<pre>{escape(text.text, quote=False)}</pre>"


def size_label(chars: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if chars >= scale:
            return f"{chars / scale:.1f} {unit}"
    return f"{chars} B"
