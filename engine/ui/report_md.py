"""The run report as a short Markdown summary, for a CI job page or a pull-request comment."""

from __future__ import annotations

from stepchain.ui.report_data import RunReport, seconds
from stepchain.ui.report_svg import state_of

FAILED_LISTED = 20  # failed steps named in the summary, at most
CHANGED_LISTED = 20  # changed or new steps named, at most
ALWAYS_COUNTED = ("completed", "cached", "failed", "skipped")  # columns shown even when 0
ERROR_CHARS = 200


def render_markdown(report: RunReport) -> str:
    state = report.state
    status = "running (in progress)" if report.in_progress else state.status
    rate = report.cache_hit_rate
    counts = report.counts()
    states = [*ALWAYS_COUNTED, *(s for s in ("interrupted", "running", "pending") if counts.get(s))]
    lines = [
        f"### StepChain run `{_code(state.run_id)}`: {status}",
        "",
        "| pipeline | status | duration | total tokens | cache hit rate |",
        "| --- | --- | --- | --- | --- |",
        f"| {_cell(state.pipeline_name)} | {status} | {seconds(report.duration_s)} "
        f"| {report.total_tokens:,} | {'-' if rate is None else f'{rate:.0%}'} |",
        "",
        "| steps | " + " | ".join(states) + " |",
        "| --- |" + " --- |" * len(states),
        f"| {len(report.steps)} | " + " | ".join(str(counts.get(s, 0)) for s in states) + " |",
    ]
    waits, waited = report.rate_limit_waits()
    if waits:
        lines += ["", f"Waits for a rate limit: {waits} ({seconds(waited)} in all)."]
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
        summary = ", ".join(f"{n} {c}" for c, n in sorted(report.changes().items()))
        lines += ["", f"Against `{_code(report.previous_run)}`: {summary}"]
        changed = [v.step_id for v in report.steps if "changed" in v.change or "new" in v.change]
        if changed:
            named = ", ".join(f"`{_code(sid)}`" for sid in changed[:CHANGED_LISTED])
            more = (
                f" and {len(changed) - CHANGED_LISTED} more"
                if len(changed) > CHANGED_LISTED
                else ""
            )
            lines += ["", f"Changed or new since then: {named}{more}"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return text.replace("`", "'")
