"""The live table on stderr: step, status, cached, attempts, tokens, seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from stepchain.pipeline.definition import Pipeline
from stepchain.run.results import StepResult

_STYLE = {
    "completed": "green",
    "failed": "red",
    "skipped": "yellow",
    "interrupted": "magenta",
    "running": "cyan",
    "waiting": "blue",  # for a rate limit
    "pending": "dim",
}


class LiveTable:
    """An observer for the scheduler that redraws a table as steps start and finish."""

    def __init__(self, pipeline: Pipeline, console: Console | None = None) -> None:
        self.pipeline = pipeline
        self.console = console or Console(stderr=True)
        self.rows: dict[str, dict[str, Any]] = {
            s.id: {"status": "pending", "cached": "", "attempts": 0, "tokens": "", "seconds": ""}
            for s in pipeline.steps
        }
        self.started: dict[str, float] = {}
        self.waits: dict[str, int] = {}  # requests of a step waiting for a rate limit
        self.rates: Callable[[], list[str]] | None = None
        self.many = len(pipeline.steps) > 60  # a huge table helps nobody: summarise instead
        self.shown = False
        # Live redraws from table() at most 8 times a second; events only update the rows,
        # so a 2,000-step run does not build 6,000 tables.
        self.live = Live(
            console=self.console, get_renderable=self.table, refresh_per_second=8, transient=False
        )

    def __enter__(self) -> LiveTable:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.shown:
            return
        if self.console.is_terminal:
            self.live.__exit__(kind, error, traceback)
            return
        # Not a terminal (a CI log, a file): no redrawing, just the final table once, on lines
        # of its own without trailing padding, so what follows starts on a new line.
        with self.console.capture() as captured:
            self.console.print(self.table())
        lines = [line.rstrip() for line in captured.get().splitlines()]
        self.console.file.write("\n".join(lines) + "\n")
        self.console.file.flush()

    def watch_limits(self, summary: Callable[[], list[str]]) -> None:
        """The executor hands over the run's rate-limit summary: one line per model."""
        self.rates = summary

    def __call__(self, event: str, step_id: str, result: StepResult | None) -> None:
        if not self.shown:  # only once steps run: an error before the first step stays one line
            self.shown = True
            if self.console.is_terminal:
                self.live.__enter__()
        row = self.rows[step_id]
        if event == "start":
            row["status"] = "running"
            self.started[step_id] = time.monotonic()
        elif event == "attempt":
            row["attempts"] += 1
        elif event in ("waiting", "resumed"):
            self.waits[step_id] = self.waits.get(step_id, 0) + (1 if event == "waiting" else -1)
            if row["status"] in ("running", "waiting"):
                row["status"] = "waiting" if self.waits[step_id] > 0 else "running"
        elif event == "finish" and result is not None:
            row["status"] = result.status
            row["cached"] = "yes" if result.cached else ""
            row["attempts"] = result.attempts
            tokens = result.usage.get("total_tokens")
            row["tokens"] = str(tokens) if tokens else ""
            row["seconds"] = f"{result.duration_s:.2f}" if result.duration_s is not None else ""

    def table(self) -> Table:
        lines = self.rates() if self.rates is not None else []
        table = Table(
            title=f"stepchain · {self.pipeline.name}",
            title_justify="left",
            caption="\n".join(lines) or None,
            caption_justify="left",
        )
        for column in ("step", "status", "cached", "attempts", "tokens", "seconds"):
            table.add_column(
                column, justify="right" if column in ("attempts", "tokens", "seconds") else "left"
            )
        if self.many:
            counts: dict[str, int] = {}
            for row in self.rows.values():
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            for status, count in sorted(counts.items()):
                table.add_row(f"{count} steps", f"[{_STYLE[status]}]{status}[/]", "", "", "", "")
            return table
        for sid, row in self.rows.items():
            style = _STYLE.get(row["status"], "")
            table.add_row(
                sid,
                f"[{style}]{row['status']}[/]",
                row["cached"],
                str(row["attempts"] or ""),
                row["tokens"],
                row["seconds"],
            )
        return table
