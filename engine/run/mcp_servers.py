"""A run's MCP servers: the pool built from the pipeline's tools, approval, and calls."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from stepchain.errors import StepChainError, StepError
from stepchain.pipeline.definition import ToolSpec
from stepchain.templates.render import render_value
from stepchain.tools.blocking import run_in_thread
from stepchain.tools.mcp.client import McpPool, McpServerSpec
from stepchain.tools.mcp.stdio import max_message_from_env

if TYPE_CHECKING:
    from stepchain.run.context import Runtime


def make_pool(runtime: Runtime) -> McpPool:
    """One pool per run: every engine-run (stdio or HTTP) MCP server of the pipeline."""
    context = runtime.base_context()
    max_message = max_message_from_env()  # a malformed setting fails before anything starts
    specs = {}
    for name, tool in runtime.pipeline.tools.items():
        if tool.type != "mcp" or tool.hosted:
            continue
        env = render_value(dict(tool.env), context, ("tools", name, "env"), runtime.locate)
        specs[name] = McpServerSpec(
            name=name,
            command=server_command(runtime, name),
            url=tool.url,
            env={k: str(v) for k, v in env.items()},
            cwd=str(runtime.pipeline.base_dir),
            allowed_tools=tool.allowed_tools,
            max_message_bytes=max_message,
        )
    return McpPool(specs)


def server_command(runtime: Runtime, name: str) -> list[str] | None:
    """A stdio server's argv, its templates rendered from inputs and env (as `env:` is)."""
    command = runtime.pipeline.tools[name].command
    if not command:
        return None
    path = ("tools", name, "command")
    rendered = render_value(list(command), runtime.base_context(), path, runtime.locate)
    return [str(arg) for arg in rendered]


def approval_servers(runtime: Runtime) -> list[str]:
    """Engine-run MCP servers with require_approval: always that some step may call."""
    used: set[str] = set()
    for step in runtime.pipeline.steps:
        if step.kind == "tool":
            used.add(step.get("tool").partition(".")[0])
        elif step.kind == "prompt":
            used.update(step.get("tools") or [])
    return sorted(name for name in used if _needs_approval(runtime.pipeline.tools.get(name)))


def hosted_approval_servers(runtime: Runtime) -> list[str]:
    """Hosted MCP servers with require_approval: always that some prompt step offers."""
    used = {name for step in runtime.pipeline.steps for name in step.get("tools") or []}
    tools = runtime.pipeline.tools
    return sorted(
        name
        for name in used
        if (spec := tools.get(name))
        and spec.type == "mcp"
        and spec.hosted
        and spec.require_approval == "always"
    )


def check_approval_possible(runtime: Runtime) -> None:
    """Before anything runs: approval needs --approve or a terminal to ask on.

    The provider calls a hosted MCP server itself, in the middle of a stateless request, so
    StepChain cannot ask per call: those need --approve even on a terminal.
    """
    hosted = hosted_approval_servers(runtime)
    if hosted and not runtime.options.approve:
        raise StepChainError(
            f"hosted MCP server(s) {', '.join(hosted)} require approval for every call, "
            "which the provider would ask for in the middle of a request",
            "review what they may do, then approve their calls up front with approve=True",
        )
    servers = approval_servers(runtime)
    if servers and not runtime.options.approve and not _interactive():
        raise StepChainError(
            f"MCP server(s) {', '.join(servers)} require approval for every call, "
            "and there is no terminal to ask on",
            "review the pipeline's tool calls, then pass approve=True",
        )


async def call_tool(
    runtime: Runtime, server: str, tool: str, arguments: dict[str, Any], timeout: float | None
) -> Any:
    """Call `server.tool`, asking for approval first where the server requires it."""
    if _needs_approval(runtime.pipeline.tools[server]) and not runtime.options.approve:
        await _ask(runtime, server, tool, arguments)
    connection = await runtime.mcp.get(server)
    return await connection.call_tool(tool, arguments, timeout=timeout)


def _needs_approval(spec: ToolSpec | None) -> bool:
    return bool(
        spec and spec.type == "mcp" and not spec.hosted and spec.require_approval == "always"
    )


def _interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()


async def _ask(runtime: Runtime, server: str, tool: str, arguments: dict[str, Any]) -> None:
    if not _interactive():
        raise StepError(
            f"MCP tool '{server}.{tool}' requires approval and there is no terminal to ask on",
            "pass approve=True after reviewing the pipeline",
            kind="approval",
        )
    async with runtime.approval_lock:  # one question at a time, even when steps run in parallel
        shown = runtime.mask(arguments)
        question = f"\nAllow MCP tool {server}.{tool} with arguments {shown}? [y/N] "
        with runtime.asking():  # the live table leaves the terminal while a person answers
            answer = await run_in_thread(_prompt, question=question)
    if answer.strip().lower() not in ("y", "yes"):
        raise StepError(f"MCP tool '{server}.{tool}' was not approved", kind="approval")


def _prompt(*, question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline()
