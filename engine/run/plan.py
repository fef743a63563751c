"""`stepchain plan`: layers, critical path, and which steps replay from cache or must run.

Like a terraform plan, each step's request is rendered from the cached outputs of its upstream
steps and looked up in the cache; a step is `unknown` only where an upstream step must run first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from stepchain.cache.store import ResultCache, cache_key
from stepchain.errors import StepChainError
from stepchain.pipeline.definition import Pipeline, Step
from stepchain.pipeline.graph import layers_and_critical_path
from stepchain.pipeline.inputs import resolve_inputs
from stepchain.run.context import RunOptions, Runtime
from stepchain.settings import Settings, current_settings
from stepchain.steps import kind_module
from stepchain.templates import Vars
from stepchain.templates.render import evaluate

Action = Literal["replay", "run", "unknown", "skip", "error"]


@dataclass
class StepPlan:
    step_id: str
    kind: str
    action: Action
    layer: int
    needs: list[str]
    detail: str | None = None


@dataclass
class Plan:
    pipeline: str
    layers: list[list[str]]
    critical_path: list[str]
    steps: list[StepPlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "layers": self.layers,
            "critical_path": self.critical_path,
            "steps": {
                s.step_id: {k: v for k, v in vars(s).items() if k != "step_id"} for s in self.steps
            },
        }


def plan_pipeline(
    pipeline: Pipeline, inputs: dict[str, Any] | None = None, settings: Settings | None = None
) -> Plan:
    """Compute the plan; never executes a step or calls a model."""
    return _plan(pipeline, inputs, settings)


def _plan(pipeline: Pipeline, inputs: dict[str, Any] | None, settings: Settings | None) -> Plan:
    deps = {s.id: s.needs for s in pipeline.steps}
    generations, longest = layers_and_critical_path(deps)
    resolved = resolve_inputs(pipeline, inputs or {})
    runtime = Runtime(pipeline, current_settings(settings), RunOptions(), "plan", resolved)
    cache = ResultCache(runtime.settings)
    known: dict[str, dict[str, Any]] = Vars()  # step id -> {"output", "status"} once predictable
    plan = Plan(pipeline.name, generations, longest)
    try:
        # A layer's steps only read steps of earlier layers, so each layer is rendered first and
        # its cache keys are then looked up together, in one query instead of one per key.
        for number, layer in enumerate(generations):
            steps = sorted((pipeline.step(sid) for sid in layer), key=lambda s: s.index)
            prepared = [_prepare_step(step, runtime, known) for step in steps]
            wanted = [key for p in prepared if isinstance(p, _Rendered) for key in p.cache_keys()]
            entries = cache.lookup_many(wanted)
            for step, outcome in zip(steps, prepared, strict=True):
                action, detail = (
                    _resolve(step, outcome, entries, known)
                    if isinstance(outcome, _Rendered)
                    else outcome
                )
                plan.steps.append(
                    StepPlan(step.id, step.kind, action, number, sorted(step.needs), detail)
                )
    finally:
        cache.close()
    index = {step.id: step.index for step in pipeline.steps}
    plan.steps.sort(key=lambda s: index[s.step_id])
    return plan


@dataclass
class _Rendered:
    """A step whose requests are rendered; what it does depends on the cache."""

    step: Step
    requests: list[Any]
    keys: list[str] | None = None  # one per request, once computed; none when not cached

    def cache_keys(self) -> list[str]:
        if self.keys is None:
            kind = self.step.kind
            self.keys = [cache_key(kind, r) for r in self.requests] if self.step.cache else []
        return self.keys


def _prepare_step(
    step: Step, runtime: Runtime, known: dict[str, dict[str, Any]]
) -> _Rendered | tuple[Action, str | None]:
    """Render the step's requests, or decide it without the cache (skip, unknown, error)."""
    context = runtime.base_context()
    context["steps"] = known  # shared: copying it per step would be quadratic
    missing = [n for n in step.needs if n not in known]
    if missing:
        missing.sort()
        if step.when is not None and _known_false(step, context, runtime):
            known[step.id] = {"output": None, "status": "skipped"}
            return "skip", f"when: {step.when} is false"
        return "unknown", f"waits for {', '.join(missing)}"
    try:
        when = step.when
        if when is not None and not evaluate(
            when, context, runtime.path_of(step, "when"), runtime.locate
        ):
            known[step.id] = {"output": None, "status": "skipped"}
            return "skip", f"when: {step.when} is false"
        module = _kind_module(step.kind)
        if step.foreach is not None:
            items = evaluate(
                step.foreach, context, runtime.path_of(step, "foreach"), runtime.locate
            )
            if isinstance(items, dict):
                items = list(items.items())
            if not isinstance(items, (list, tuple)):
                return "error", f"foreach must give a list, got {type(items).__name__}"
            requests = [
                module.render_request(step, {**context, "item": it, "index": i}, runtime)
                for i, it in enumerate(items)
            ]
        else:
            requests = [module.render_request(step, context, runtime)]
    except StepChainError as exc:
        return "error", exc.message
    return _Rendered(step, requests)


def _resolve(
    step: Step,
    rendered: _Rendered,
    entries: dict[str, dict[str, Any]],
    known: dict[str, dict[str, Any]],
) -> tuple[Action, str | None]:
    """Replay when every request is cached, else run; record what later steps can know."""
    if not step.cache:
        found: list[dict[str, Any] | None] = [None]
    elif not entries:  # none of this layer's keys is cached (and there is at least one request)
        found = [None] if rendered.requests else []
    else:
        found = [entries.get(key) for key in rendered.cache_keys()]
    if any(entry is None for entry in found):
        if step.kind == "template":  # pure: its output is known without running anything
            outputs = [r["output"] for r in rendered.requests]
            output = outputs if step.foreach is not None else outputs[0]
            known[step.id] = {"output": output, "status": "completed"}
        return "run", None if step.cache else "cache: false"
    output = [e["output"] for e in found] if step.foreach is not None else found[0]["output"]
    known[step.id] = {"output": output, "status": "completed"}
    return "replay", None


_kind_module = lru_cache(maxsize=None)(kind_module)  # importlib's lookup, once per kind


def _known_false(step: Step, context: dict[str, Any], runtime: Runtime) -> bool:
    """A `when` that is already false from what is known (e.g. inputs alone)."""
    try:
        return not evaluate(step.when or "", context, runtime.path_of(step, "when"), runtime.locate)
    except StepChainError:
        return False  # it reads an output that is not known yet
