"""Misbehaving MCP servers for tests, run over stdio.

`python mcp_servers.py` serves `flaky`, whose tools crash the process or hang the whole server.
`python mcp_servers.py --raw` serves a hand-written JSON-RPC server that completes the
handshake and then answers tool calls with garbage (the SDK's own server guards stdout too
well to misbehave that way).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer

SCRIPT = Path(__file__)

mcp = MCPServer("flaky", log_level="WARNING")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


@mcp.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@mcp.tool()
def crash() -> str:
    """Die mid-call, as a server with a fatal bug would."""
    print("fatal: the flaky server crashed on purpose", file=sys.stderr, flush=True)
    os._exit(1)


@mcp.tool()
async def hang(seconds: float = 60) -> str:
    """Block the server's event loop: it answers nothing, not even cancellation."""
    time.sleep(seconds)
    return "woke up"


RAW_TOOLS = [
    {"name": "garbage", "description": "Answers with a line that is not JSON.", "inputSchema": {"type": "object"}},
    {"name": "bad_result", "description": "Answers with a malformed result.", "inputSchema": {"type": "object"}},
]


def _raw_answer(request: dict) -> dict | str | None:
    """The reply to one request: a JSON-RPC message, a garbage line, or None for notifications."""
    method, params = request.get("method"), request.get("params") or {}
    if "id" not in request:
        return None
    if method == "initialize":
        result = {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "raw", "version": "0"},
        }
    elif method == "tools/list":
        result = {"tools": RAW_TOOLS}
    elif method == "tools/call" and params.get("name") == "garbage":
        return "this is not JSON-RPC"
    elif method == "tools/call":
        result = {"content": "not a list of content blocks"}
    else:
        error = {"code": -32601, "message": f"Method not found: {method}"}
        return {"jsonrpc": "2.0", "id": request["id"], "error": error}
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def serve_raw() -> None:
    for line in sys.stdin:
        answer = _raw_answer(json.loads(line))
        if answer is not None:
            print(answer if isinstance(answer, str) else json.dumps(answer), flush=True)


if __name__ == "__main__":
    if "--raw" in sys.argv:
        serve_raw()
    else:
        mcp.run()
