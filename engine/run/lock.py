"""Lock files: `stepchain lock FILE` writes FILE.lock, what each step's request and output are.

The lock is YAML in a stable order (the pipeline's step order, fixed keys, no timestamps), so
writing it twice without a change gives the same bytes and a diff shows exactly which steps a
change re-runs. Per step: the request digest (the cache key `plan` and runs compute, through
`run.prepare.prepare_step`), the output digest, the model, the usage, and a short digest per
field of the step as written (so a check without a cache still says what changed and why).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from stepchain.cache import ResultCache, canonical_json
from stepchain.errors import LockError, LockOutdated
from stepchain.pipeline.definition import DEFAULT_MODEL, Pipeline
from stepchain.pipeline.inputs import resolve_inputs
from stepchain.run.plan import Plan, plan_pipeline
from stepchain.settings import Settings, current_settings

LOCK_FORMAT = 1
HEADER = "# stepchain lock file: written by `stepchain lock`; do not edit by hand\n"

# which field of a step, when it changes, is which reason a reviewer reads
_REASONS = {
    "prompt": "prompt",
    "system": "prompt",
    "model": "model",
    "with": "tool arguments",
    "tool": "tool",
    "run": "command",
    "template": "template",
}
# fields that never change a request
_INERT = frozenset(
    {"id", "needs", "name", "description", "retries", "backoff", "timeout", "continue_on_error"}
)


@dataclass
class Change:
    """A step whose request no longer matches the lock, and why."""

    step_id: str
    reasons: list[str]


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def lock_path(pipeline_file: str | Path) -> Path:
    path = Path(pipeline_file)
    return path.with_name(path.name + ".lock")


def build_lock(
    pipeline: Pipeline,
    inputs: dict[str, Any] | None = None,
    settings: Settings | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """The lock document of `pipeline` as the cache knows it now (plain data, stable order)."""
    settings = current_settings(settings)
    plan = plan or plan_pipeline(pipeline, inputs, settings)
    cache = ResultCache(settings)
    try:
        steps = {sp.step_id: _locked_step(pipeline, sp, cache) for sp in plan.steps}
    finally:
        cache.close()
    return {
        "format": LOCK_FORMAT,
        "pipeline": pipeline.name,
        "file": pipeline.path.name if pipeline.path else None,
        "inputs": digest(resolve_inputs(pipeline, inputs or {})),
        "defaults": digest(pipeline.defaults),
        "steps": steps,
    }


def _locked_step(pipeline: Pipeline, planned: Any, cache: ResultCache) -> dict[str, Any]:
    step = pipeline.step(planned.step_id)
    doc: dict[str, Any] = {"kind": step.kind}
    doc["request"] = planned.cache_key
    doc["calls"] = len(planned.keys) if planned.action != "skip" else 0
    doc["output"] = digest(planned.output) if planned.action == "replay" else None
    if step.kind == "prompt":
        model = step.get("model")
        doc["model"] = model if isinstance(model, str) else DEFAULT_MODEL
    usage: dict[str, int] = {}
    if planned.action == "replay" and step.cache:
        for entry in cache.lookup_many(planned.keys).values():
            for name, count in sorted((entry.get("usage") or {}).items()):
                if isinstance(count, int):
                    usage[name] = usage.get(name, 0) + count
    doc["usage"] = dict(sorted(usage.items()))
    doc["fields"] = {name: digest(value)[:12] for name, value in sorted(step.spec.items())}
    return doc


def lock_text(doc: dict[str, Any]) -> str:
    # libyaml's emitter when PyYAML has it (3x faster; the same bytes for a lock's plain data)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return HEADER + yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=True, width=1000)


def write_lock(
    pipeline: Pipeline,
    inputs: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> tuple[Path, bool]:
    """Write FILE.lock beside the pipeline; returns its path and whether its bytes changed."""
    if pipeline.path is None:
        raise LockError("a lock is written beside a pipeline file; this pipeline has none")
    path = lock_path(pipeline.path)
    text = lock_text(build_lock(pipeline, inputs, settings))
    old = path.read_text(encoding="utf-8") if path.exists() else None
    if old != text:
        path.write_text(text, encoding="utf-8")
    return path, old != text


def read_lock(path: str | Path, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """The lock document at `path`, checked: its format, and (with `pipeline`) its file.

    Raises:
        LockError: missing, not YAML, a newer format, or a lock of another pipeline file
            (the message names the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LockError(
            f"{path}: cannot read the lock file ({exc.strerror})",
            f"write it with `stepchain lock {path.name.removesuffix('.lock')}`",
        ) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise LockError(
            f"{where}: not a valid lock file (YAML error)", "write it again with `stepchain lock`"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), dict):
        raise LockError(
            f"{path}:1: not a stepchain lock file", "write it again with `stepchain lock`"
        )
    version = doc.get("format")
    if not isinstance(version, int) or version > LOCK_FORMAT:
        raise LockError(
            f"{path}:{_line_of(text, 'format')}: lock format {version!r} is newer than this "
            f"StepChain reads ({LOCK_FORMAT})",
            "upgrade StepChain, or write the lock again with this version",
        )
    if pipeline is not None and pipeline.path is not None:
        named = doc.get("file")
        if named != pipeline.path.name:
            raise LockError(
                f"{path}:{_line_of(text, 'file')}: this lock is for {named}, not "
                f"{pipeline.path.name}",
                f"write the lock of {pipeline.path.name} with `stepchain lock {pipeline.path}`",
            )
    return doc


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    return 1


def compare(
    pipeline: Pipeline, plan: Plan, lock: dict[str, Any], inputs_digest: str
) -> list[Change]:
    """The steps whose requests no longer match `lock`, in pipeline order, with reasons.

    A step whose request can be rendered (its upstream outputs are cached) is compared by its
    request digest; one that cannot (an upstream must run first) by its fields as written and
    by whether an upstream step changed.
    """
    locked: dict[str, Any] = lock.get("steps") or {}
    changed: dict[str, list[str]] = {}
    for planned in plan.steps:
        step = pipeline.step(planned.step_id)
        was = locked.get(step.id)
        if not isinstance(was, dict):
            changed[step.id] = ["new step"]
            continue
        fields = {name: digest(value)[:12] for name, value in step.spec.items()}
        old_fields = was.get("fields") or {}
        reasons = sorted(
            {
                _REASONS.get(name, name)
                for name in set(fields) | set(old_fields)
                if name not in _INERT and fields.get(name) != old_fields.get(name)
            }
        )
        upstream = sorted(n for n in step.needs if n in changed)
        if upstream:
            reasons.append(f"upstream output ({', '.join(upstream)})")
        if planned.cache_key is not None and was.get("request") is not None:
            if planned.cache_key == was["request"]:
                continue  # the request is exactly the locked one
            if not reasons:
                reasons.append(_other_reason(pipeline, step.needs, lock, inputs_digest))
        elif planned.action == "skip" and was.get("calls"):
            reasons = reasons or ["now skipped"]
        if reasons:
            changed[step.id] = reasons
    for step_id in locked:
        if step_id not in pipeline.by_id:
            changed[step_id] = ["removed"]
    return [Change(step_id, reasons) for step_id, reasons in changed.items()]


def _other_reason(
    pipeline: Pipeline, needs: frozenset[str], lock: dict[str, Any], inputs_digest: str
) -> str:
    if lock.get("inputs") != inputs_digest:
        return "inputs"
    if lock.get("defaults") != digest(pipeline.defaults):
        return "defaults"
    if needs:
        return f"upstream output ({', '.join(sorted(needs))})"
    return "request"


def check_lock(
    pipeline: Pipeline,
    inputs: dict[str, Any] | None = None,
    settings: Settings | None = None,
    lock_file: str | Path | None = None,
) -> tuple[Plan, dict[str, Any], list[Change]]:
    """The plan, the lock and the changes between them (`lock --check`, `plan --against`)."""
    if lock_file is None:
        if pipeline.path is None:
            raise LockError("a pipeline without a file has no lock file; pass the lock's path")
        lock_file = lock_path(pipeline.path)
    lock = read_lock(lock_file, pipeline)
    plan = plan_pipeline(pipeline, inputs, settings)
    inputs_digest = digest(resolve_inputs(pipeline, inputs or {}))
    return plan, lock, compare(pipeline, plan, lock, inputs_digest)


def check_lock_file(pipeline: Pipeline, inputs: dict[str, Any] | None = None) -> str:
    """`stepchain lock --check`: a one-line confirmation, or LockOutdated naming the steps."""
    _, lock, changes = check_lock(pipeline, inputs)
    name = lock_path(pipeline.path or pipeline.name).name
    if changes:
        listed = "; ".join(f"{c.step_id} ({', '.join(c.reasons)})" for c in changes)
        raise LockOutdated(
            f"{name} is out of date: {len(changes)} step(s) changed: {listed}",
            f"review the change, then write the lock again: stepchain lock {pipeline.path}",
        )
    return f"{name} matches: {len(lock['steps'])} steps"
