"""A hostile MCP server built with the SDK's `MCPServer`: `python hostile_mcp.py` serves stdio,
`python hostile_mcp.py --http PORT [--events]` streamable HTTP (JSON replies, or server-sent
events).

Every start appends its pid to `$HOSTILE_STATE/starts`. Its tools answer with more data than
anyone should hold, crash while another call is in flight, leak a secret on stderr, or block.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

SCRIPT = Path(__file__)
STATE = Path(os.environ.get("HOSTILE_STATE", "."))
CRASHED = STATE / "crashed"  # the pid of the server `crash_with_peer` crashed, once it has

mcp = MCPServer("hostile")
_peer_waiting = asyncio.Event()


def _crash(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


@mcp.tool()
def pid() -> dict[str, Any]:
    """This server's process id."""
    return {"pid": os.getpid()}


@mcp.tool()
def huge(mb: int) -> str:
    """A text result of `mb` megabytes."""
    return "x" * (mb * 10**6)


@mcp.tool()
async def peer() -> dict[str, Any]:
    """Waits for `crash_with_peer` to crash the first server; answers at once on later ones."""
    if not CRASHED.exists():
        _peer_waiting.set()
        await asyncio.Event().wait()  # the crash ends this server with the call in flight
    return {"pid": os.getpid()}


@mcp.tool()
async def crash_with_peer() -> str:
    """Crashes the server once a `peer` call is in flight; crashes at once on later servers."""
    if not CRASHED.exists():
        await asyncio.wait_for(_peer_waiting.wait(), 60)
        CRASHED.write_text(str(os.getpid()))
    _crash("fatal: crash_with_peer crashed the server")
    return "unreachable"


@mcp.tool()
def leak() -> str:
    """Prints the secret in $TOKEN to stderr, plain and transformed, then crashes."""
    token = os.environ["TOKEN"]
    _crash(f"auth failed for {token} (reversed {token[::-1]}, upper {token.upper()})")
    return "unreachable"


@mcp.tool()
def shout(mb: int) -> str:
    """Writes `mb` megabytes to stderr, then a last line, then crashes."""
    chunk = "noise " * 100_000 + "\n"
    for _ in range(mb * 10**6 // len(chunk)):
        sys.stderr.write(chunk)
    _crash("fatal: out of breath")
    return "unreachable"


@mcp.tool()
async def block() -> str:
    """Starts a child process, writes the server's pid and the child's to
    $HOSTILE_STATE/blocked, then never answers."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (STATE / "blocked").write_text(f"{os.getpid()} {child.pid}")
    await asyncio.Event().wait()
    return "unreachable"


if __name__ == "__main__":
    with (STATE / "starts").open("a") as starts:
        starts.write(f"{os.getpid()}\n")
    if sys.argv[1:2] == ["--http"]:  # streamable HTTP on a port, replies as JSON or events
        events = sys.argv[3:4] == ["--events"]
        mcp.run(
            "streamable-http", host="127.0.0.1", port=int(sys.argv[2]), json_response=not events
        )
    else:
        mcp.run()
