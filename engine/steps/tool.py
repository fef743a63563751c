"""Tool steps: a deterministic call of a function tool or of an MCP server's tool, no LLM."""

from __future__ import annotations

from typing import Any

from stepchain.pipeline.definition import Step
from stepchain.steps.base import Outcome, RunServices
from stepchain.templates.render import render_value


def render_request(step: Step, context: dict[str, Any], run: RunServices) -> dict[str, Any]:
    arguments = render_value(step.get("with") or {}, context, run.path_of(step, "with"), run.locate)
    name, _, remote = step.get("tool").partition(".")
    spec = run.pipeline.tools[name]
    if spec.type == "function":
        return {"tool": name, **run.function_identity(name), "arguments": arguments}
    return {
        "tool": name,
        "remote": remote,
        "server": run.mcp_identity(name),
        "arguments": arguments,
    }


async def execute(
    step: Step, request: dict[str, Any], run: RunServices, feedback: str | None = None
) -> Outcome:
    if "function" in request:
        tool = run.function_tool(request["tool"])
        return Outcome(await tool.call(request["arguments"], offload=run.offload))
    output = await run.call_mcp(
        request["tool"], request["remote"], request["arguments"], step.timeout
    )
    return Outcome(output)
