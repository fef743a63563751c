"""The dependency graph as inline SVG: a layered layout, one column per topological generation."""

from __future__ import annotations

from html import escape

from stepchain.ui.report_data import RunReport, StepView

NODE_W, NODE_H = 160, 28
COL_GAP, ROW_GAP, MARGIN = 70, 12, 16
LABEL_CHARS = 20


def state_of(view: StepView) -> str:
    """The state a step is drawn in: a CSS class suffix."""
    if view.change in ("running", "pending"):  # not recorded yet, in a run in progress
        return view.change
    return "cached" if view.result.cached else view.result.status


def graph_svg(report: RunReport) -> str:
    """An <svg> with a <g class="node"> per step and a <path class="edge"> per dependency."""
    where: dict[str, tuple[int, int]] = {}
    for col, layer in enumerate(report.layers):
        for row, sid in enumerate(layer):
            where[sid] = (
                MARGIN + col * (NODE_W + COL_GAP),
                MARGIN + row * (NODE_H + ROW_GAP),
            )
    width = MARGIN * 2 + max(len(report.layers), 1) * (NODE_W + COL_GAP) - COL_GAP
    tallest = max((len(layer) for layer in report.layers), default=1)
    height = MARGIN * 2 + tallest * (NODE_H + ROW_GAP) - ROW_GAP
    parts = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="dependency graph">'
    ]
    for view in report.steps:  # edges first, under the nodes
        if view.step_id not in where:
            continue
        x2, y2 = where[view.step_id]
        for need in view.needs:
            if need not in where:
                continue
            x1, y1 = where[need]
            x1, y1, y2c = x1 + NODE_W, y1 + NODE_H // 2, y2 + NODE_H // 2
            mid = (x1 + x2) // 2
            parts.append(f'<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2c} {x2},{y2c}"/>')
    for i, view in enumerate(report.steps):
        if view.step_id not in where:
            continue
        x, y = where[view.step_id]
        sid = view.step_id
        label = sid if len(sid) <= LABEL_CHARS else sid[: LABEL_CHARS - 1] + "…"
        if view.items is not None:
            label = f"{label} ×{view.items}"
        parts.append(
            f'<g class="node s-{state_of(view)}" data-step="s{i}" tabindex="0">'
            f"<title>{escape(sid)} ({escape(state_of(view))})</title>"
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + NODE_H // 2 + 4}">{escape(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
