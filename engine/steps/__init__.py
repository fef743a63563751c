"""Step kinds: one module per kind, each with `render_request` and `execute` (see `base`)."""

from __future__ import annotations

from functools import cache

from stepchain.steps.base import Outcome, RunServices, StepKind

__all__ = ["Outcome", "RunServices", "StepKind", "kind_of"]


def kind_of(kind: str) -> StepKind:
    """The module implementing a step kind (`prompt`, `tool`, `run`, `template`)."""
    return _kinds()[kind]


@cache
def _kinds() -> dict[str, StepKind]:
    from stepchain.steps import command, prompt, template, tool  # imported on first use

    return {"prompt": prompt, "tool": tool, "run": command, "template": template}
