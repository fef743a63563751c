"""The live table on stderr: step, status, cached, attempts, tokens, seconds, and a total row.

A step is `queued` until it has a concurrency slot, and its seconds count from then (its work,
not its wait, nor the time a person took to answer an approval question); a running `foreach`
step shows how many of its items are done. A replayed step's tokens are shown as saved: this
run did not spend them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    "queued": "dim",  # for a concurrency slot
    "pending": "dim",
}
_COLUMNS = ("step", "status", "cached", "attempts", "tokens", "seconds")


class LiveTable:
    """An observer for the scheduler that redraws a table as steps start and finish."""

    def __init__(
        self,
        pipeline: Pipeline,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.rows: dict[str, dict[str, Any]] = {
            s.id: {"status": "pending", "cached": "", "attempts": 0, "tokens": "", "seconds": ""}
            for s in pipeline.steps
        }
        self.began: dict[str, float] = {}  # when each step got its first slot: its work began
        self.held: dict[str, float] = {}  # seconds a step waited for a person's answer
        self.items: dict[str, tuple[int, int]] = {}  # a running foreach step: (done, total)
        self.spent = 0  # tokens spent by finished steps
        self.saved = 0  # tokens replayed steps did not spend again
        self.opened: float | None = None
        self.waits: dict[str, int] = {}  # requests of a step waiting for a rate limit
        self.rates: Callable[[], list[str]] | None = None
        self.many = len(pipeline.steps) > 60  # a huge table helps nobody: summarise instead
        self.shown = False
        self.live = self._new_live()

    def _new_live(self) -> Live:
        # Live redraws from table() at most 8 times a second; events only update the rows,
        # so a 2,000-step run does not build 6,000 tables.
        return Live(
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

    def progress(self, step_id: str, done: int, total: int) -> None:
        """A foreach step's items: `done` of `total` have finished."""
        self.items[step_id] = (done, total)

    @contextmanager
    def paused(self, step_id: str | None) -> Iterator[None]:
        """Take the table off the terminal while a question is asked there, then redraw it.

        The table is erased (not left behind to be drawn again below the answer), the cursor
        is shown for typing, and the time spent here is not counted as the step's seconds.
        """
        began = self.clock()
        live = self.shown and self.console.is_terminal and self.live.is_started
        if live:
            self.live.transient = True
            self.live.stop()
        try:
            yield
        finally:
            if step_id is not None:
                self.held[step_id] = self.held.get(step_id, 0.0) + self.clock() - began
            if live:
                self.live = self._new_live()  # a fresh render: it starts below the answer
                self.live.start(refresh=True)

    def __call__(self, event: str, step_id: str, result: StepResult | None) -> None:
        if not self.shown:  # only once steps run: an error before the first step stays one line
            self.shown = True
            self.opened = self.clock()
            if self.console.is_terminal:
                self.live.__enter__()
        row = self.rows[step_id]
        if event == "start":
            row["status"] = "queued"
        elif event == "attempt":
            self.began.setdefault(step_id, self.clock())
            if row["status"] == "queued":
                row["status"] = "running"
            row["attempts"] += 1
        elif event in ("waiting", "resumed"):
            self.waits[step_id] = self.waits.get(step_id, 0) + (1 if event == "waiting" else -1)
            if row["status"] in ("running", "waiting"):
                row["status"] = "waiting" if self.waits[step_id] > 0 else "running"
        elif event == "finish" and result is not None:
            self._finished(step_id, row, result)

    def _finished(self, step_id: str, row: dict[str, Any], result: StepResult) -> None:
        row["status"] = result.status
        row["cached"] = "yes" if result.cached else ""
        row["attempts"] = result.attempts
        tokens = result.usage.get("total_tokens") or 0
        if result.cached:
            self.saved += tokens
            row["tokens"] = f"{tokens} saved" if tokens else ""
        else:
            self.spent += tokens
            row["tokens"] = str(tokens) if tokens else ""
        seconds = self._work_seconds(step_id)
        if seconds is None:  # never executed (replayed, skipped): the record's own duration
            seconds = result.duration_s
        row["seconds"] = f"{seconds:.2f}" if seconds is not None else ""
        self.items.pop(step_id, None)

    def _work_seconds(self, step_id: str) -> float | None:
        began = self.began.get(step_id)
        if began is None:
            return None
        return max(0.0, self.clock() - began - self.held.get(step_id, 0.0))

    def table(self) -> Table:
        lines = self.rates() if self.rates is not None else []
        table = Table(
            title=f"stepchain · {self.pipeline.name}",
            title_justify="left",
            caption="\n".join(lines) or None,
            caption_justify="left",
        )
        for column in _COLUMNS:
            table.add_column(
                column, justify="right" if column in ("attempts", "tokens", "seconds") else "left"
            )
        if self.many:
            counts: dict[str, int] = {}
            for row in self.rows.values():
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            for status, count in sorted(counts.items()):
                table.add_row(f"{count} steps", f"[{_STYLE[status]}]{status}[/]", "", "", "", "")
        else:
            for sid, row in self.rows.items():
                table.add_row(sid, *self._cells(sid, row))
        table.add_section()
        table.add_row(*self._total())
        return table

    def _cells(self, step_id: str, row: dict[str, Any]) -> tuple[str, ...]:
        status, seconds = row["status"], row["seconds"]
        attempts = str(row["attempts"] or "")
        shown = status
        if status in ("running", "waiting"):
            elapsed = self._work_seconds(step_id)
            seconds = f"{elapsed:.1f}" if elapsed is not None else ""
            if step_id in self.items:  # a foreach: its items' progress, not their attempts
                done, total = self.items[step_id]
                shown, attempts = f"{status} {done}/{total}", ""
        return (
            f"[{_STYLE.get(status, '')}]{shown}[/]",
            row["cached"],
            attempts,
            row["tokens"],
            seconds,
        )

    def _total(self) -> tuple[str, ...]:
        rows = self.rows.values()
        finished = sum(r["status"] not in ("pending", "queued", "running", "waiting") for r in rows)
        cached = sum(r["cached"] == "yes" for r in rows)
        tokens = str(self.spent) if self.spent else ""
        if self.saved:
            tokens = f"{tokens} + {self.saved} saved" if tokens else f"{self.saved} saved"
        elapsed = self.clock() - self.opened if self.opened is not None else 0.0
        return (
            "all steps",
            f"{finished}/{len(self.rows)} done",
            str(cached) if cached else "",
            str(sum(r["attempts"] or 0 for r in rows) or ""),
            tokens,
            f"{elapsed:.2f}",
        )
