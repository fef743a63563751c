"""Template steps: pure rendering, no side effects."""

from __future__ import annotations

from typing import Any

from stepchain.pipeline.definition import Step
from stepchain.steps.base import Outcome, RunServices
from stepchain.templates.render import render_value


def render_request(step: Step, context: dict[str, Any], run: RunServices) -> dict[str, Any]:
    return {
        "output": render_value(
            step.get("template"), context, run.path_of(step, "template"), run.locate
        )
    }


def template_outcome(request: dict[str, Any]) -> Outcome:
    """Executing a template step: its rendered request is its output (the scheduler runs this
    inline, without a task, when a concurrency slot is free)."""
    return Outcome(request["output"])


async def execute(
    step: Step, request: dict[str, Any], run: RunServices, feedback: str | None = None
) -> Outcome:
    return template_outcome(request)
