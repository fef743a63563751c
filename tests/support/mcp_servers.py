"""A misbehaving MCP server for tests: `python mcp_servers.py` serves it over stdio.

It is hand-written JSON-RPC (the SDK's own server guards stdout too well to misbehave), speaks
the initialize handshake of a pre-2026 server, and imports nothing from mcp, so it starts in
milliseconds. Its tools answer, crash the process, never answer, or answer with garbage.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__)

TOOLS = {
    "pid": "Answers with the server's process id, as structured content.",
    "quit": "Answers, then exits: the server dies between calls.",
    "crash": "Writes to stderr and dies mid-call.",
    "hang": "Never answers (the server keeps serving other requests).",
    "garbage": "Answers with a line that is not JSON.",
    "bad_result": "Answers with a result that is not a valid tool result.",
    "flood": "Sends a 3 MB notification (no request id) instead of an answer.",
}


def answer(request: dict[str, Any]) -> dict[str, Any] | str | None:
    """The reply to one message: JSON-RPC, a garbage line, or None for no reply."""
    method, params = request.get("method"), request.get("params") or {}
    tool = params.get("name")
    if "id" not in request or (method == "tools/call" and tool == "hang"):
        return None
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "flaky", "version": "0"},
        }
    elif method == "tools/list":
        schema = {"type": "object"}
        result = {
            "tools": [
                {"name": n, "description": d, "inputSchema": schema} for n, d in TOOLS.items()
            ]
        }
    elif method == "tools/call" and tool == "quit":
        result = {"content": [{"type": "text", "text": "bye"}]}
    elif method == "tools/call" and tool == "pid":
        pid = os.getpid()
        result = {
            "content": [{"type": "text", "text": str(pid)}],
            "structuredContent": {"pid": pid},
        }
    elif method == "tools/call" and tool == "crash":
        print("fatal: the flaky server crashed on purpose", file=sys.stderr, flush=True)
        os._exit(1)
    elif method == "tools/call" and tool == "garbage":
        return "this is not JSON-RPC"
    elif method == "tools/call" and tool == "flood":
        log = {"level": "info", "data": "x" * 3_000_000}
        return json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": log})
    elif method == "tools/call":
        result = {"content": "not a list of content blocks"}
    else:  # e.g. server/discover: unknown to a pre-2026 server, so the client falls back
        error = {"code": -32601, "message": f"Method not found: {method}"}
        return {"jsonrpc": "2.0", "id": request["id"], "error": error}
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        reply = answer(request)
        if reply is not None:
            print(reply if isinstance(reply, str) else json.dumps(reply), flush=True)
        if request.get("params", {}).get("name") == "quit":
            sys.exit(0)


if __name__ == "__main__":
    serve()
