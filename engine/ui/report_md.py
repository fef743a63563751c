"""The run report as a short Markdown summary, for a CI job page or a pull-request comment."""

from __future__ import annotations

from stepchain.ui.report_data import RunReport, seconds
from stepchain.ui.report_svg import state_of

FAILED_LISTED = 20  # failed steps named in the summary, at most
ERROR_CHARS = 200


def render_markdown(report: RunReport) -> str:
    state = report.state
    status = "running (in progress)" if report.in_progress else state.status
    rate = report.cache_hit_rate
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.counts().items()))
    lines = [
        f"### StepChain run `{_code(state.run_id)}`: {status}",
        "",
        "| pipeline | status | duration | total tokens | cache hit rate | steps |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {_cell(state.pipeline_name)} | {status} | {seconds(report.duration_s)} "
        f"| {report.total_tokens:,} | {'-' if rate is None else f'{rate:.0%}'} | {counts} |",
    ]
    lines += [f"\n> {note}" for note in report.notes]
    failed = [v for v in report.steps if state_of(v) in ("failed", "interrupted")]
    if failed:
        lines += ["", "**Failed steps**", ""]
        for view in failed[:FAILED_LISTED]:
            error = (view.result.error or view.result.reason or "").splitlines()
            first = error[0][:ERROR_CHARS] if error else ""
            lines.append(f"- `{_code(view.step_id)}`: {_cell(first)}")
        if len(failed) > FAILED_LISTED:
            lines.append(f"- and {len(failed) - FAILED_LISTED} more")
    if report.previous_run:
        changes: dict[str, int] = {}
        for view in report.steps:
            changes[view.change] = changes.get(view.change, 0) + 1
        summary = ", ".join(f"{n} {c}" for c, n in sorted(changes.items()))
        lines += ["", f"Against `{_code(report.previous_run)}`: {summary}"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return text.replace("`", "'")
