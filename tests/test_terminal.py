"""What a person sees on a terminal: the live table and the approval question.

`stepchain run` runs in a pseudo-terminal and its output is fed to a terminal emulator (pyte),
so the tests read the screen as it looks, cursor moves and erasures applied.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyte
import pytest

from tests.support.fake_openai import FakeOpenAI, Reply

COLUMNS, ROWS = 100, 40
MCP_SERVER = Path(__file__).parent / "support" / "mcp_servers.py"

GATES = '''
import os
import time
from pathlib import Path


def gate(name: str) -> str:
    """Wait (at most a minute) until the test opens the gate NAME."""
    path = Path(os.environ["GATES"]) / name
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return name
'''


class Terminal:
    """`stepchain ARGS` on a pseudo-terminal (stdin, stdout and stderr), read into a screen."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), **env}
        environment.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stepchain.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=environment,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.closed = False

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines()).strip("\n")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program ended and closed the terminal
            data = b""
        if not data:
            self.closed = True
        self.stream.feed(data)

    def wait_for(self, what: Callable[[Terminal], bool], timeout: float = 60) -> None:
        """Read until `what` holds for the screen (a bounded wait)."""
        deadline = time.monotonic() + timeout
        while not what(self):
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed it:\n{self.text()}")
            self._read(0.05)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(0.05)
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str, env: dict[str, str] | None = None) -> Terminal:
        term = Terminal([str(a) for a in args], tmp_path, {"STEPCHAIN_DEBUG": "", **(env or {})})
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def row(term: Terminal, step: str) -> list[str]:
    """The cells of a step's row on the screen."""
    for line in term.lines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if cells and cells[0] == step:
            return cells
    raise AssertionError(f"no row for {step}:\n{term.text()}")


def shows_cells(step: str, cells: list[str]) -> Callable[[Terminal], bool]:
    """The step's row shows exactly `cells` after its name (False while half drawn)."""

    def check(term: Terminal) -> bool:
        try:
            return row(term, step)[1:] == cells
        except AssertionError:
            return False

    return check


def seconds_at_least(step: str, seconds: float) -> Callable[[Terminal], bool]:
    """The step's seconds on screen reached `seconds` (False while the table is half drawn)."""

    def check(term: Terminal) -> bool:
        try:
            return float(row(term, step)[5] or 0) >= seconds
        except (AssertionError, IndexError, ValueError):
            return False

    return check


def shows(step: str, status: str) -> Callable[[Terminal], bool]:
    def check(term: Terminal) -> bool:
        try:
            return row(term, step)[1] == status
        except AssertionError:
            return False

    return check


def recorded(cli, run_id: str) -> dict:
    return json.loads(cli("runs", "show", run_id, "--json").stdout)


# -- the live table -------------------------------------------------------------------------
def test_live_table_shows_queued_steps_foreach_progress_elapsed_time_and_a_total(
    cli, write, tmp_path, terminal
):
    write("gates.py", GATES)
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / "now").touch()
    path = write(
        "gated.yaml",
        """
        version: 1
        name: gated
        tools:
          gate: {type: function, function: "gates:gate"}
        steps:
          - id: fan
            foreach: '["now", "second"]'
            tool: gate
            with: {name: "{{ item }}"}
          - id: first
            tool: gate
            with: {name: first}
        """,
    )
    term = terminal(
        "run", path, "--max-concurrent", "1", "--run-id", "gated", env={"GATES": str(gates)}
    )

    # one slot: `first` holds it, the foreach waits for it without counting seconds
    term.wait_for(shows("first", "running"))
    term.wait_for(shows_cells("fan", ["queued", "", "", "", ""]))
    term.wait_for(seconds_at_least("first", 2.0))  # its time runs on screen
    term.wait_for(shows("all steps", "0/2 done"))

    (gates / "first").touch()
    term.wait_for(shows("first", "completed"))
    term.wait_for(shows("fan", "running 1/2"))  # one item done of two
    term.wait_for(shows("all steps", "1/2 done"))
    (gates / "second").touch()
    assert term.finish() == 0

    fan = row(term, "fan")
    assert fan[1:4] == ["completed", "", "1"]
    # its seconds are its work: the record's duration also counts the 2 s it was queued
    assert float(fan[5]) < recorded(cli, "gated")["steps"]["fan"]["duration_s"] - 1.0
    total = row(term, "all steps")
    assert total[1] == "2/2 done" and float(total[5]) >= 2.0
    assert "run gated completed" in term.text()
    assert not term.screen.cursor.hidden


def test_replayed_steps_show_their_tokens_as_saved(cli, write, monkeypatch):
    path = write("ask.yaml", "version: 1\nname: ask\nsteps:\n  - {id: ask, prompt: hi}\n")
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        server.default = Reply.text("hello")
        first = cli("run", path).stderr
        second = cli("run", path).stderr
    assert re.search(r"│ ask +│ completed │ +│ +1 │ +15 │", first)
    assert re.search(r"│ all steps │ 1/1 done +│ +│ +1 │ +15 │", first)
    assert re.search(r"│ ask +│ completed │ yes +│ +│ 15 saved │", second)
    assert re.search(r"│ all steps │ 1/1 done +│ 1 +│ +│ 15 saved │", second)


# -- the approval question ------------------------------------------------------------------
def test_approval_question_takes_the_table_off_the_screen_and_its_wait_is_not_the_steps(
    cli, write, terminal
):
    path = write(
        "approve.yaml",
        f"""
        version: 1
        name: approve
        tools:
          flaky:
            type: mcp
            command: [{sys.executable}, "{MCP_SERVER}"]
            require_approval: always
        steps:
          - id: pid
            tool: flaky.pid
        """,
    )
    term = terminal("run", path, "--run-id", "asked", env={"STEPCHAIN_ALLOW_RUN": "1"})
    term.wait_for(lambda t: "[y/N]" in t.text())
    asking = term.text()
    assert asking.rstrip().endswith("Allow MCP tool flaky.pid with arguments {}? [y/N]")
    assert "stepchain · approve" not in asking  # the table is off the screen, not under it
    assert not term.screen.cursor.hidden  # the cursor is there to type at
    time.sleep(2.0)  # a person reads the question
    term.send("y\n")
    assert term.finish() == 0

    lines = term.lines()
    assert sum("stepchain · approve" in line for line in lines) == 1  # the banner once
    question = next(i for i, line in enumerate(lines) if "[y/N] y" in line)
    banner = next(i for i, line in enumerate(lines) if "stepchain · approve" in line)
    assert question < banner  # the table is drawn again below the answer
    assert row(term, "pid")[1] == "completed"
    assert not term.screen.cursor.hidden
    # the step's seconds are its work, not the person's answer (the record counts both)
    duration = recorded(cli, "asked")["steps"]["pid"]["duration_s"]
    assert duration >= 2.0
    assert float(row(term, "pid")[5]) < duration - 1.0


def test_refused_approval_fails_the_step_and_says_so(cli, write, terminal):
    path = write(
        "approve.yaml",
        f"""
        version: 1
        name: approve
        tools:
          flaky:
            type: mcp
            command: [{sys.executable}, "{MCP_SERVER}"]
            require_approval: always
        steps:
          - id: pid
            tool: flaky.pid
        """,
    )
    term = terminal("run", path, "--run-id", "refused", env={"STEPCHAIN_ALLOW_RUN": "1"})
    term.wait_for(lambda t: "[y/N]" in t.text())
    term.send("\n")  # the default is no
    assert term.finish() == 1
    assert row(term, "pid")[1] == "failed"
    assert "step pid failed: MCP tool 'flaky.pid' was not approved" in term.text()
    assert recorded(cli, "refused")["steps"]["pid"]["status"] == "failed"
