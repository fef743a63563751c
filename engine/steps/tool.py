"""Tool steps: a deterministic call of a function tool or of an MCP server's tool, no LLM."""

from __future__ import annotations

from typing import Any

from stepchain.pipeline.definition import Step
from stepchain.steps import Outcome
from stepchain.templates.render import render_value


def render_request(step: Step, context: dict[str, Any], runtime: Any) -> dict[str, Any]:
    arguments = render_value(
        step.get("with") or {}, context, runtime.path_of(step, "with"), runtime.locate
    )
    name, _, remote = step.get("tool").partition(".")
    spec = runtime.pipeline.tools[name]
    if spec.type == "function":
        tool = runtime.function_tool(name)
        return {
            "tool": name,
            "function": tool.target,
            "code": tool.fingerprint,
            "arguments": arguments,
        }
    return {
        "tool": name,
        "remote": remote,
        "server": runtime.mcp_identity(name),
        "arguments": arguments,
    }


async def execute(
    step: Step, request: dict[str, Any], runtime: Any, feedback: str | None = None
) -> Outcome:
    if "function" in request:
        tool = runtime.function_tool(request["tool"])
        return Outcome(await tool.call(request["arguments"], offload=runtime.offload))
    output = await runtime.call_mcp(
        request["tool"], request["remote"], request["arguments"], step.timeout
    )
    return Outcome(output)
