"""`stepchain report`: a recorded run as a self-contained HTML page or a Markdown summary."""

from __future__ import annotations

from pathlib import Path

from stepchain.errors import StepChainError
from stepchain.ui.report_data import load_report
from stepchain.ui.report_html import render_html
from stepchain.ui.report_md import render_markdown

FORMATS = ("html", "md")


def render_report(run_id: str, fmt: str = "html") -> str:
    """The report of a recorded run (finished, failed or still in progress).

    Raises:
        RunNotFound: no run has this id.
    """
    report = load_report(run_id)
    return render_markdown(report) if fmt == "md" else render_html(report)


def write_report(text: str, path: str | Path) -> None:
    """Write a report; a folder that is missing or not writable is a one-line error."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StepChainError(
            f"cannot write the report to {path}: {exc.strerror or exc}",
            "give -o a path in a folder that exists and that you can write to",
        ) from None
