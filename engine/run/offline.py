"""`stepchain run --offline`: refuse before anything runs if a step would need a call."""

from __future__ import annotations

from typing import Any

from stepchain.errors import OfflineRefused
from stepchain.pipeline.definition import Pipeline
from stepchain.run.plan import plan_pipeline
from stepchain.settings import Settings

_CALLS = {"prompt": "an LLM call", "tool": "a tool call", "run": "a command"}


def check_offline(
    pipeline: Pipeline, inputs: dict[str, Any], settings: Settings, run_id: str
) -> None:
    """Raise OfflineRefused naming every step that would call a model, a tool or a command."""
    plan = plan_pipeline(pipeline, inputs, settings, run_id=run_id)
    needed = [
        f"{sp.step_id} ({_CALLS.get(sp.kind, sp.action)})"
        for sp in plan.steps
        if sp.action in ("run", "unknown", "error") and (sp.kind in _CALLS or sp.action == "error")
    ]
    if needed:
        raise OfflineRefused(
            f"--offline: {len(needed)} step(s) would need a call: {', '.join(needed)}; "
            "nothing was run",
            "import their cache entries (`stepchain bundle import B`), or run without --offline",
        )
