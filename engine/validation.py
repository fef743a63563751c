"""Everything `stepchain validate` checks beyond the JSON Schema: ids, references, tools, cycles."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError
from jsonschema import Draft202012Validator, SchemaError
from jsonschema import ValidationError as SchemaValidationError

from stepchain.errors import Problem
from stepchain.graph import build_graph, find_cycles
from stepchain.model import KINDS, LLM_FIELDS
from stepchain.schema import did_you_mean
from stepchain.templates import Reference, references
from stepchain.yaml_source import Path, Source

_TEMPLATED_STEP_FIELDS = ("prompt", "system", "template", "model", "run", "with")
_STEP_ATTRS = ("output", "status")


@dataclass
class Checked:
    """What the checks learned that loading needs: each step's dependencies."""

    deps: dict[str, set[str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def check_semantics(source: Source) -> Checked:
    """All checks that need more than the schema. Works on partially broken documents too."""
    data = source.data if isinstance(source.data, dict) else {}
    checked = Checked()
    steps = [
        (i, s)
        for i, s in enumerate(data.get("steps") or [] if isinstance(data.get("steps"), list) else [])
        if isinstance(s, dict) and isinstance(s.get("id"), str)
    ]
    ids = _check_ids(source, steps, checked)
    inputs = data.get("inputs") if isinstance(data.get("inputs"), dict) else {}
    names = {
        "inputs": set(inputs),
        "env": _names(data.get("env")),
        "secrets": _names(data.get("secrets")),
    }
    tools = data.get("tools") if isinstance(data.get("tools"), dict) else {}
    _check_inputs(source, inputs, checked)
    for i, step in steps:
        deps = checked.deps.setdefault(step["id"], set())
        for dep_index, dep in enumerate(step.get("needs") or []):
            if not isinstance(dep, str):
                continue
            if dep not in ids:
                checked.problems.append(
                    source.problem(
                        ("steps", i, "needs", dep_index),
                        f"unknown step '{dep}' in needs{did_you_mean(dep, ids)}",
                    )
                )
            else:
                deps.add(dep)
        scope = dict(names, foreach="foreach" in step)
        for path, text, is_expr in _templated(step, ("steps", i)):
            deps |= _check_template(source, path, text, is_expr, ids, scope, checked)
        _check_kind_fields(source, i, step, checked)
        _check_tool_use(source, i, step, tools, checked)
        _check_output_schema(source, i, step, checked)
    for name, tool in tools.items():
        if isinstance(tool, dict) and isinstance(tool.get("env"), dict):
            for key, value in tool["env"].items():
                if isinstance(value, str):
                    scope = dict(names, foreach=False, steps_allowed=False)
                    _check_template(source, ("tools", name, "env", key), value, False, ids, scope, checked)
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    for path, text in _strings(outputs, ("outputs",)):
        _check_template(source, path, text, False, ids, dict(names, foreach=False), checked)
    _check_cycles(source, steps, checked)
    return checked


def _names(value: Any) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def _check_ids(source: Source, steps: list[tuple[int, dict]], checked: Checked) -> set[str]:
    first: dict[str, int] = {}
    for i, step in steps:
        sid = step["id"]
        if sid in first:
            line = source.where(("steps", first[sid], "id"))[0]
            checked.problems.append(
                source.problem(("steps", i, "id"), f"duplicate step id '{sid}' (first used at line {line})")
            )
        else:
            first[sid] = i
    return set(first)


def _check_inputs(source: Source, inputs: dict[str, Any], checked: Checked) -> None:
    for name, schema in inputs.items():
        if not isinstance(schema, dict):
            continue
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            checked.problems.append(
                source.problem(("inputs", name, *exc.path), f"not a valid JSON Schema: {exc.message}")
            )
            continue
        if "default" in schema:
            try:
                Draft202012Validator(schema).validate(schema["default"])
            except SchemaValidationError as exc:
                checked.problems.append(
                    source.problem(("inputs", name, "default"), f"default does not match its schema: {exc.message}")
                )


def _templated(step: dict[str, Any], base: Path) -> Iterator[tuple[Path, str, bool]]:
    for key in _TEMPLATED_STEP_FIELDS:
        if key in step:
            for path, text in _strings(step[key], (*base, key)):
                yield path, text, False
    for key in ("when", "foreach"):
        if isinstance(step.get(key), str):
            yield (*base, key), step[key], True


def _strings(value: Any, path: Path) -> Iterator[tuple[Path, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))


def _check_template(
    source: Source,
    path: Path,
    text: str,
    is_expr: bool,
    ids: set[str],
    scope: dict[str, Any],
    checked: Checked,
) -> set[str]:
    """Problems of one template; returns the step ids it references."""
    try:
        refs = references(text, expression=is_expr)
    except TemplateSyntaxError as exc:
        line, col = _template_position(source, path, exc.lineno or 1, None)
        what = "expression" if is_expr else "template"
        checked.problems.append(
            Problem(source.file, line, col, _fmt(path), f"Jinja {what} syntax error: {exc.message}")
        )
        return set()
    found: set[str] = set()
    for ref in refs:
        message = _reference_problem(ref, ids, scope)
        if message:
            line, col = _template_position(source, path, ref.lineno, ref)
            checked.problems.append(Problem(source.file, line, col, _fmt(path), message))
        elif ref.root == "steps" and ref.key:
            found.add(ref.key)
    return found


def _reference_problem(ref: Reference, ids: set[str], scope: dict[str, Any]) -> str | None:
    if ref.root == "steps":
        if scope.get("steps_allowed") is False:
            return "tool settings cannot use step outputs: they are fixed for the whole run"
        if ref.key is None:
            return (
                "steps must be referenced by a literal id, e.g. steps.fetch.output "
                'or steps["my-step"].output'
            )
        if ref.key not in ids:
            return f"unknown step '{ref.key}'{did_you_mean(ref.key, ids)}"
        if ref.attr is not None and ref.attr not in _STEP_ATTRS:
            return f"steps.{ref.key} has no '{ref.attr}': use steps.{ref.key}.output or .status"
        return None
    if ref.root in ("item", "index"):
        return None if scope.get("foreach") else f"'{ref.root}' is only defined in a foreach step"
    if ref.root == "run":
        return None if ref.key in (None, "id") else f"run has no '{ref.key}': only run.id"
    declared = scope.get(ref.root, set())
    if ref.key is None or ref.key in declared:
        return None
    if ref.root == "inputs":
        return f"unknown input '{ref.key}'{did_you_mean(ref.key, declared)}"
    return f"{ref.root}.{ref.key} is not declared: add {ref.key} to `{ref.root}:` at the top of the pipeline"


def _template_position(source: Source, path: Path, lineno: int, ref: Reference | None) -> tuple[int, int]:
    line, col = source.where(path)
    block = path in source.block_scalars
    file_line = line + lineno if block else line + lineno - 1
    text_lines = source.text.splitlines()
    if not 0 < file_line <= len(text_lines):
        return line, col
    content = text_lines[file_line - 1]
    start = col - 1 if not block and lineno == 1 else len(content) - len(content.lstrip())
    if ref is not None:
        pattern = rf"\b{re.escape(ref.root)}\b"
        if ref.key:
            pattern += rf"\s*(\.\s*{re.escape(ref.key)}\b|\[\s*['\"]{re.escape(ref.key)}['\"])"
        match = re.compile(pattern).search(content, start) or re.compile(rf"\b{ref.root}\b").search(content, start)
        if match:
            return file_line, match.start() + 1
    return file_line, start + 1


def _fmt(path: Path) -> str:
    from stepchain.yaml_source import format_path

    return format_path(path)


def _check_kind_fields(source: Source, i: int, step: dict[str, Any], checked: Checked) -> None:
    kinds = [k for k in KINDS if k in step]
    if len(kinds) != 1:
        return  # the schema reports zero or several kinds
    kind = kinds[0]
    misplaced = [f for f in LLM_FIELDS if f in step] if kind != "prompt" else []
    if kind != "tool" and "with" in step:
        misplaced.append("with")
    for name in misplaced:
        owner = "tool" if name == "with" else "prompt"
        checked.problems.append(
            source.problem(
                ("steps", i, name),
                f"'{name}' only applies to {owner} steps, and this is a {kind} step",
                key=True,
            )
        )


def _check_tool_use(source: Source, i: int, step: dict[str, Any], tools: dict, checked: Checked) -> None:
    if isinstance(step.get("tool"), str):
        name, _, remote = step["tool"].partition(".")
        problem = _tool_step_problem(name, remote, tools)
        if problem:
            checked.problems.append(source.problem(("steps", i, "tool"), problem))
    if "prompt" in step and isinstance(step.get("tools"), list):
        for j, name in enumerate(step["tools"]):
            if isinstance(name, str) and name not in tools:
                checked.problems.append(
                    source.problem(
                        ("steps", i, "tools", j),
                        f"unknown tool '{name}'{did_you_mean(name, set(tools))}: define it under `tools:`",
                    )
                )


def _tool_step_problem(name: str, remote: str, tools: dict) -> str | None:
    if name not in tools:
        return f"unknown tool '{name}'{did_you_mean(name, set(tools))}: define it under `tools:`"
    tool = tools[name]
    if not isinstance(tool, dict):
        return None
    kind = tool.get("type")
    if kind == "function" and remote:
        return f"'{name}' is a function tool: call it as tool: {name}"
    if kind == "mcp":
        if "server_url" in tool:
            return f"'{name}' is a hosted MCP server run by the LLM provider; offer it to a prompt step"
        if not remote:
            return f"'{name}' is an MCP server: name the remote tool, e.g. tool: {name}.<tool name>"
        allowed = tool.get("allowed_tools")
        if isinstance(allowed, list) and remote not in allowed:
            return f"MCP tool '{remote}' is not in allowed_tools of '{name}' ({', '.join(map(str, allowed))})"
    if kind in ("web_search", "file_search", "code_interpreter"):
        return f"'{name}' ({kind}) is run by the LLM provider; offer it to a prompt step with tools: [{name}]"
    return None


def _check_output_schema(source: Source, i: int, step: dict[str, Any], checked: Checked) -> None:
    schema = step.get("output_schema")
    if not isinstance(schema, dict):
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        checked.problems.append(
            source.problem(
                ("steps", i, "output_schema", *exc.path),
                f"output_schema is not a valid JSON Schema: {exc.message}",
            )
        )


def _check_cycles(source: Source, steps: list[tuple[int, dict]], checked: Checked) -> None:
    index = {}
    for i, step in steps:
        index.setdefault(step["id"], i)
    graph = build_graph(checked.deps)
    for cycle in find_cycles(graph, list(index)):
        checked.problems.append(
            source.problem(("steps", index[cycle[0]], "id"), "cycle: " + " -> ".join(cycle))
        )
