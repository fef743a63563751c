"""Starts a stdio MCP server tied to the run that started it; run as a script, not imported.

`python -I launcher.py PARENT_PID PROGRAM [ARG...]` runs PROGRAM with this process's stdin,
stdout and stderr, in the process group the engine made for it (`start_new_session`). The
server must not outlive the run, even one killed with `kill -9`, which runs no cleanup:

- the launcher polls its parent (the engine) every PARENT_POLL seconds: a portable check with
  no call into the C library, at the cost of a wake-up a few times a second;
- when the parent is gone, or the engine stops the group with SIGTERM, the launcher kills the
  whole group with SIGKILL: the server and anything the server started (an `npx` wrapper's
  node process, say).

It imports nothing from StepChain, so it starts in a few milliseconds, and exits with the
server's exit code (127 when the program cannot be started).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PARENT_POLL = 0.25  # seconds between checks that the engine is still there


def kill_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)  # the launcher included: nothing of the server is left


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, kill_group)
    if os.getppid() != parent:  # the engine died before this started
        return 1
    try:
        server = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 127
    # Only the server talks on stdin/stdout: the engine sees EOF when the server closes them.
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    while True:
        try:
            code = server.wait(PARENT_POLL)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:
                kill_group()
            continue
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
