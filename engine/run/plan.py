"""`stepchain plan`: layers, critical path, and which steps replay from cache or must run.

Like a terraform plan, each step's request is rendered from the cached outputs of its upstream
steps and looked up in the cache; a step is `unknown` only where an upstream step must run first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stepchain.cache import ResultCache
from stepchain.errors import StepChainError
from stepchain.llm.providers import default_base_url, qualified, split_model
from stepchain.pipeline.consent import Runnable, what_runs
from stepchain.pipeline.definition import DEFAULT_MODEL, Pipeline, Step
from stepchain.pipeline.graph import layers_and_critical_path
from stepchain.pipeline.inputs import resolve_inputs
from stepchain.run.context import RunOptions, Runtime
from stepchain.run.prepare import PreparedStep, prepare_step
from stepchain.settings import Settings, current_settings
from stepchain.templates import Vars
from stepchain.templates.render import evaluate
from stepchain.templates.sandbox import MAX_RENDER_SECONDS, max_render_size, render_budget
from stepchain.tools.functions import NotImported

Action = Literal["replay", "run", "unknown", "skip", "error"]


@dataclass
class StepPlan:
    step_id: str
    kind: str
    action: Action
    layer: int
    needs: list[str]
    detail: str | None = None
    provider: str | None = None  # LLM steps: the named provider, or None for the default server
    base_url: str | None = None  # LLM steps: where their requests go

    @property
    def where(self) -> str | None:
        """`provider NAME at URL` or `default server at URL` for an LLM step."""
        if self.base_url is None:
            return None
        who = f"provider {self.provider}" if self.provider else "default server"
        return f"{who} at {self.base_url}"

    cache_key: str | None = None  # the step's key, once its request can be rendered
    keys: list[str] = field(default_factory=list)  # each request's cache key
    output: Any = None  # the output a replay gives (not in to_dict)


@dataclass
class Plan:
    pipeline: str
    layers: list[list[str]]
    critical_path: list[str]
    steps: list[StepPlan] = field(default_factory=list)
    runs: list[Runnable] = field(default_factory=list)  # programs and code a run would use

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "runs": [vars(r) for r in self.runs],
            "layers": self.layers,
            "critical_path": self.critical_path,
            "steps": {
                s.step_id: {k: v for k, v in vars(s).items() if k not in _NOT_SHOWN}
                for s in self.steps
            },
        }


_NOT_SHOWN = ("step_id", "keys", "output")


def plan_pipeline(
    pipeline: Pipeline,
    inputs: dict[str, Any] | None = None,
    settings: Settings | None = None,
    run_id: str = "plan",
) -> Plan:
    """Compute the plan; never executes a step or calls a model.

    `run_id` is what `{{ run.id }}` renders as (a run's own id predicts that run exactly).
    """
    return _plan(pipeline, inputs, settings, run_id)


def _plan(
    pipeline: Pipeline, inputs: dict[str, Any] | None, settings: Settings | None, run_id: str
) -> Plan:
    max_render_size()  # a malformed STEPCHAIN_MAX_RENDER_SIZE is a usage error, first
    deps = {s.id: s.needs for s in pipeline.steps}
    generations, longest = layers_and_critical_path(deps)
    resolved = resolve_inputs(pipeline, inputs or {})
    runtime = Runtime(pipeline, current_settings(settings), RunOptions(), run_id, resolved)
    runtime.imports = False  # reviewing a file runs none of its code
    cache = ResultCache(runtime.settings)
    known: dict[str, dict[str, Any]] = Vars()  # step id -> {"output", "status"} once predictable
    plan = Plan(pipeline.name, generations, longest, runs=what_runs(pipeline))
    try:
        # A layer's steps only read steps of earlier layers, so each layer is prepared first and
        # its cache keys are then looked up together.
        for number, layer in enumerate(generations):
            steps = sorted((pipeline.step(sid) for sid in layer), key=lambda s: s.index)
            prepared = [_prepare(step, runtime, known) for step in steps]
            wanted = [
                key
                for p in prepared
                if isinstance(p, PreparedStep) and p.step.cache
                for key in p.keys
            ]
            entries = cache.lookup_many(wanted) if wanted else {}
            for step, outcome in zip(steps, prepared, strict=True):
                action, detail = (
                    _resolve(outcome, entries, known)
                    if isinstance(outcome, PreparedStep)
                    else outcome
                )
                planned = StepPlan(step.id, step.kind, action, number, sorted(step.needs), detail)
                if step.kind == "prompt":
                    _where(planned, step, outcome, runtime)
                if isinstance(outcome, PreparedStep):
                    planned.cache_key, planned.keys = outcome.cache_key, outcome.keys
                    if dict.__contains__(known, step.id):  # Vars: a step may be named `get`
                        planned.output = dict.__getitem__(known, step.id)["output"]
                plan.steps.append(planned)
    finally:
        cache.close()
    index = {step.id: step.index for step in pipeline.steps}
    plan.steps.sort(key=lambda s: index[s.step_id])
    return plan


def _prepare(
    step: Step, runtime: Runtime, known: dict[str, dict[str, Any]]
) -> PreparedStep | tuple[Action, str | None]:
    """The step prepared as a run would prepare it, or decided without the cache."""
    context = {**runtime.base_context(), "steps": known}
    missing = sorted(n for n in step.needs if n not in known)
    if missing:
        if step.when is not None and _known_false(step, context, runtime):
            known[step.id] = {"output": None, "status": "skipped"}
            return "skip", f"when: {step.when} is false"
        return "unknown", f"waits for {', '.join(missing)}"
    try:
        prepared = prepare_step(step, context, runtime)
    except NotImported as exc:
        return "unknown", exc.message
    except StepChainError as exc:
        return "error", runtime.mask.text(exc.message)
    if prepared.skip_reason is not None:
        known[step.id] = {"output": None, "status": "skipped"}
        return "skip", prepared.skip_reason
    return prepared


def _resolve(
    prepared: PreparedStep,
    entries: dict[str, dict[str, Any]],
    known: dict[str, dict[str, Any]],
) -> tuple[Action, str | None]:
    """Replay when every request is cached, else run; record what later steps can know."""
    step = prepared.step
    found = [entries.get(key) for key in prepared.keys] if step.cache else [None]
    hits = [entry for entry in found if entry is not None]
    if len(hits) < len(found):
        if step.kind == "template":  # pure: its output is known without running anything
            outputs = [request["output"] for request in prepared.requests]
            known[step.id] = {"output": prepared.output_of(outputs), "status": "completed"}
        return "run", _why_run(step, _servers(prepared))
    outputs = [entry["output"] for entry in hits]
    known[step.id] = {"output": prepared.output_of(outputs), "status": "completed"}
    return "replay", _why_replay(step, _servers(prepared))


def _where(planned: StepPlan, step: Step, outcome: Any, runtime: Runtime) -> None:
    """The provider and base URL of an LLM step's requests (from its rendered request, or from
    its model as written when that is not a template)."""
    if isinstance(outcome, PreparedStep) and outcome.requests:
        model = str(outcome.requests[0]["model"])
    else:
        model = qualified(str(step.get("model") or DEFAULT_MODEL), step.get("provider"))
        if "{" in model:
            return
    provider, _ = split_model(model, runtime.providers)
    if provider is not None:
        planned.provider, planned.base_url = provider.name, provider.base_url
    else:
        planned.base_url = default_base_url()


def _why_run(step: Step, servers: str) -> str:
    """Why a step must run: its cache policy and where that policy is written."""
    if not step.cache:
        return f"cache: false, from {step.cache_source}"
    if step.cache_by_server and step.kind == "prompt":
        return (
            f"not cached: it offers {servers}, which set no cache:, so its answer is "
            "cached only if the servers mark every tool offered read-only and closed-world"
        )
    if step.cache_by_server:
        server, _, tool = step.get("tool").partition(".")
        return (
            f"not cached: tools.{server} sets no cache:, so {tool} is cached only if the server "
            "marks it read-only and closed-world"
        )
    if step.cache_ttl is not None:
        return (
            f"no cached result for this request (entries kept {step.cache_ttl:g}s, "
            f"from {step.cache_source})"
        )
    return "no cached result for this request"


def _why_replay(step: Step, servers: str) -> str:
    """Why a step replays: a cached result of the same request, and the policy allowing it."""
    ttl = f" (entries kept {step.cache_ttl:g}s)" if step.cache_ttl is not None else ""
    if step.cache_by_server and step.kind == "prompt":
        return f"cached: the servers mark every tool offered read-only and closed-world ({servers})"
    if step.cache_by_server:
        server, _, tool = step.get("tool").partition(".")
        return f"cached: the server marks {tool} read-only and closed-world (tools.{server})"
    return f"cached result of the same request; cache policy{ttl} from {step.cache_source}"


def _servers(prepared: PreparedStep) -> str:
    """The MCP servers (run by the engine) a prompt step offers, as `tools.NAME`."""
    identities = prepared.requests[0].get("tools") or [] if prepared.requests else []
    return ", ".join(f"tools.{i['name']}" for i in identities if i.get("type") == "mcp")


def _known_false(step: Step, context: dict[str, Any], runtime: Runtime) -> bool:
    """A `when` that is already false from what is known (e.g. inputs alone)."""
    try:
        with render_budget(step.timeout or MAX_RENDER_SECONDS):
            return not evaluate(
                step.when or "", context, runtime.path_of(step, "when"), runtime.locate
            )
    except StepChainError:
        return False  # it reads an output that is not known yet
