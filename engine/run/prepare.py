"""Preparing a step: its `when`, its `foreach` items, its rendered requests and cache keys.

One function, called by the scheduler before a step runs and by `stepchain plan` to predict
what a run would do, so the two can never disagree about a request or its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stepchain.cache import cache_key
from stepchain.errors import StepError
from stepchain.pipeline.definition import Step
from stepchain.run.context import Runtime
from stepchain.steps import kind_of
from stepchain.templates.render import evaluate
from stepchain.templates.sandbox import MAX_RENDER_SECONDS, render_budget


@dataclass
class PreparedStep:
    """A step ready to be looked up or executed, or decided already (`skip_reason`)."""

    step: Step
    skip_reason: str | None = None  # set when `when` is false: nothing to render
    requests: list[dict[str, Any]] = field(default_factory=list)  # one per foreach item
    keys: list[str] = field(default_factory=list)  # the cache key of each request
    cache_key: str | None = None  # the step's: its request's key, or the items' keys together

    def output_of(self, outputs: list[Any]) -> Any:
        """The step's output from its requests' outputs: a list for a foreach step."""
        return outputs if self.step.foreach is not None else outputs[0]


def prepare_step(step: Step, context: dict[str, Any], runtime: Runtime) -> PreparedStep:
    """Evaluate `when` and `foreach` and render every request of `step` against `context`.

    Raises:
        StepError: a template or expression failed, or `foreach` did not give a list; the
            message points at the place in the pipeline file.
    """
    with render_budget(step.timeout or MAX_RENDER_SECONDS):
        if step.when is not None and not evaluate(
            step.when, context, runtime.path_of(step, "when"), runtime.locate
        ):
            return PreparedStep(step, skip_reason=f"when: {step.when} is false")
        kind = kind_of(step.kind)
        if step.foreach is None:
            requests = [kind.render_request(step, context, runtime)]
        else:
            requests = [
                kind.render_request(step, {**context, "item": item, "index": index}, runtime)
                for index, item in enumerate(foreach_items(step, context, runtime))
            ]
    keys = [cache_key(step.kind, request) for request in requests]
    key = keys[0] if step.foreach is None else cache_key("foreach", keys)
    return PreparedStep(step, requests=requests, keys=keys, cache_key=key)


MAX_ITEMS = 100_000  # a foreach step's default limit (`max_items:`)


def foreach_items(step: Step, context: dict[str, Any], runtime: Runtime) -> list[Any]:
    """The items of a `foreach` step (a mapping gives its (key, value) pairs)."""
    path = runtime.path_of(step, "foreach")
    items = evaluate(step.foreach or "", context, path, runtime.locate)
    if isinstance(items, dict):
        return list(items.items())
    if not isinstance(items, (list, tuple)):
        raise StepError(
            f"{runtime.locate(path)}: foreach must give a list, got {type(items).__name__}",
            "make the expression give a list (or a mapping, whose items are (key, value) pairs)",
        )
    limit = step.get("max_items", MAX_ITEMS)
    if len(items) > limit:
        raise StepError(
            f"{runtime.locate(path)}: foreach gave {len(items):,} items, more than max_items "
            f"({limit:,})",
            "raise the step's max_items if that many executions are meant, or filter the list",
        )
    return list(items)
