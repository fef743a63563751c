"""Template steps: pure rendering, no side effects."""

from __future__ import annotations

from typing import Any

from stepchain.model import Step
from stepchain.render import render_value
from stepchain.steps import Outcome


def render_request(step: Step, context: dict[str, Any], runtime: Any) -> dict[str, Any]:
    return {
        "output": render_value(
            step.get("template"), context, runtime.path_of(step, "template"), runtime.locate
        )
    }


def template_outcome(request: dict[str, Any]) -> Outcome:
    """Executing a template step: its rendered request is its output (the scheduler runs this
    inline, without a task, when a concurrency slot is free)."""
    return Outcome(request["output"])


async def execute(
    step: Step, request: dict[str, Any], runtime: Any, feedback: str | None = None
) -> Outcome:
    return template_outcome(request)
