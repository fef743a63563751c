"""Everything `stepchain validate` checks beyond the JSON Schema: ids, references, tools, cycles."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from jinja2 import TemplateSyntaxError
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from stepchain.errors import Problem
from stepchain.pipeline.consent import function_problems
from stepchain.pipeline.definition import KINDS, LLM_FIELDS
from stepchain.pipeline.schema import did_you_mean, type_message, user_schema_problems
from stepchain.pipeline.user_settings import load_user_settings
from stepchain.pipeline.yaml_source import Path, Source
from stepchain.templates import FILTER, ROOTS, TEST, Reference, environment, references

_TEMPLATED_STEP_FIELDS = ("prompt", "system", "template", "model", "run", "with")
_STEP_ATTRS = ("output", "status")
_HOSTED = ("web_search", "file_search", "code_interpreter")
_SUGGESTIONS = 100  # "did you mean" among many names is slow; 100 hints help enough
_CONTEXT = (
    "a template can use inputs, steps, env, secrets and run (and item, index in a foreach step)"
)


@dataclass
class Checked:
    """What the checks learned that loading needs: each step's dependencies."""

    deps: dict[str, set[str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class _Scope:
    """What a template may refer to."""

    indexes: set[int]  # of the steps with an id
    ids: set[str]
    inputs: set[str]
    env: set[str]
    secrets: set[str]
    foreach: bool = False  # item and index are defined
    steps_allowed: bool = True
    secrets_allowed: bool = False  # only where a value is handed to a program (env, headers)
    suggestions: list[int] = field(default_factory=lambda: [_SUGGESTIONS])  # shared budget


def check_semantics(source: Source) -> Checked:
    """All checks that need more than the schema. Works on partially broken documents too."""
    data: dict[str, Any] = source.data if isinstance(source.data, dict) else {}
    checked = Checked()
    raw_steps = data.get("steps")
    raw_steps = raw_steps if isinstance(raw_steps, list) else []
    all_steps = [(i, s) for i, s in enumerate(raw_steps) if isinstance(s, dict)]
    steps = [(i, s) for i, s in all_steps if isinstance(s.get("id"), str)]
    inputs = data.get("inputs")
    inputs = inputs if isinstance(inputs, dict) else {}
    tools = data.get("tools")
    tools = tools if isinstance(tools, dict) else {}
    scope = _Scope(
        {i for i, _ in steps},
        _check_ids(source, steps, checked),
        set(inputs),
        _names(data.get("env")),
        _names(data.get("secrets")),
    )
    _check_inputs(source, inputs, checked)
    in_foreach = replace(scope, foreach=True)
    for i, step in all_steps:  # a step without an id is still checked, though none can need it
        deps = checked.deps.setdefault(step["id"], set()) if i in scope.indexes else set()
        deps |= _check_needs(source, i, step, scope, checked)
        step_scope = in_foreach if "foreach" in step else scope
        for path, text, is_expr in _templated(step, ("steps", i)):
            deps |= _check_template(source, path, text, is_expr, step_scope, checked)
        handed = replace(scope, steps_allowed=False, secrets_allowed=True)  # fixed for the run
        for path, text in _strings(step.get("env") if "run" in step else None, ("steps", i, "env")):
            _check_template(source, path, text, False, handed, checked)
        _check_kind_fields(source, i, step, checked)
        _check_tool_use(source, i, step, tools, checked)
        if "prompt" in step:
            _check_provider(source, ("steps", i, "provider"), step.get("provider"), data, checked)
        checked.problems += user_schema_problems(
            source, ("steps", i, "output_schema"), step.get("output_schema"), "output_schema"
        )
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        _check_provider(source, ("defaults", "provider"), defaults.get("provider"), data, checked)
    tool_scope = replace(scope, steps_allowed=False, secrets_allowed=True)
    for name, tool in tools.items():
        for field_name in ("env", "headers"):
            if isinstance(tool, dict) and isinstance(tool.get(field_name), dict):
                for path, text in _strings(tool[field_name], ("tools", name, field_name)):
                    _check_template(source, path, text, False, tool_scope, checked)
        if isinstance(tool, dict) and isinstance(tool.get("command"), list):
            for path, text in _strings(tool["command"], ("tools", name, "command")):
                _check_template(source, path, text, False, tool_scope, checked)
                if "{" in text and re.search(r"\bsecrets\b", text):
                    message = "secrets cannot go in a command line (any process can read it): pass them in env:"
                    checked.problems.append(source.problem(path, message))
    checked.problems += function_problems(source, tools)
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    for path, text in _strings(outputs, ("outputs",)):
        _check_template(source, path, text, False, scope, checked)
    _check_cycles(source, steps, checked)
    return checked


def _names(value: Any) -> set[str]:
    """Declared env or secret names; a mapping's keys count, its shape is the schema's problem."""
    return {v for v in value if isinstance(v, str)} if isinstance(value, (list, dict)) else set()


def _unknown(
    what: str,
    name: str,
    known: set[str],
    todo: str,
    context: str = "",
    budget: list[int] | None = None,
) -> str:
    """unknown step 'x' (did you mean 'y'?), or what to do and, when few, the known names."""
    hint = ""
    if budget is None or len(known) <= 50 or budget[0] > 0:
        if budget is not None and len(known) > 50:
            budget[0] -= 1
        hint = did_you_mean(name, known)
    if hint:
        return f"unknown {what} '{name}'{context}{hint}"
    listed = f" ({what}s: {', '.join(sorted(known))})" if 0 < len(known) <= 8 else ""
    return f"unknown {what} '{name}'{context}: {todo}{listed}"


def _check_ids(source: Source, steps: list[tuple[int, dict]], checked: Checked) -> set[str]:
    first: dict[str, int] = {}
    for i, step in steps:
        sid = step["id"]
        if sid in first:
            line = source.where(("steps", first[sid], "id"))[0]
            checked.problems.append(
                source.problem(
                    ("steps", i, "id"),
                    f"duplicate step id '{sid}' (first used at line {line}): give each step its own id",
                )
            )
        else:
            first[sid] = i
    return set(first)


def _check_needs(source: Source, i: int, step: dict, scope: _Scope, checked: Checked) -> set[str]:
    needs = step.get("needs")
    if not isinstance(needs, list):
        return set()  # the schema reports it
    found = set()
    for j, dep in enumerate(needs):
        if isinstance(dep, str) and dep in scope.ids:
            found.add(dep)
        elif isinstance(dep, str):
            todo = "remove it, or add a step with this id"
            message = _unknown("step", dep, scope.ids, todo, " in needs", scope.suggestions)
            checked.problems.append(source.problem(("steps", i, "needs", j), message))
    return found


def _check_inputs(source: Source, inputs: dict[str, Any], checked: Checked) -> None:
    for name, schema in inputs.items():
        if not isinstance(schema, dict):
            continue
        found = user_schema_problems(source, ("inputs", name), schema, f"input '{name}'")
        checked.problems += found
        if "default" in schema and not found:
            try:
                error = best_match(Draft202012Validator(schema).iter_errors(schema["default"]))
            except RecursionError:  # a schema nested hundreds deep: the run will say more
                continue
            if error is None:
                continue
            if error.validator == "type" and not error.absolute_path:
                message = type_message(("default",), error.validator_value, schema["default"])
            else:
                message = (
                    f"default {schema['default']!r} does not match the input's schema "
                    f"({error.message}): change the default or the schema"
                )
            checked.problems.append(source.problem(("inputs", name, "default"), message))


def _templated(step: dict[str, Any], base: Path) -> Iterator[tuple[Path, str, bool]]:
    for key in _TEMPLATED_STEP_FIELDS:
        if key in step:
            for path, text in _strings(step[key], (*base, key)):
                yield path, text, False
    for key in ("when", "foreach"):
        if isinstance(step.get(key), str) and step[key]:  # the schema reports an empty one
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
    source: Source, path: Path, text: str, is_expr: bool, scope: _Scope, checked: Checked
) -> set[str]:
    """Problems of one template; returns the step ids it references."""
    braces = re.fullmatch(r"\s*\{\{(.*)\}\}\s*", text, re.DOTALL) if is_expr else None
    if braces:
        field = path[-1]
        checked.problems.append(
            source.problem(
                path,
                f"{field} is an expression, not a template: drop the braces, "
                f"e.g. {field}: {braces.group(1).strip()}",
            )
        )
        return set()
    try:
        refs = references(text, expression=is_expr)
    except TemplateSyntaxError as exc:
        message, lineno, opener = _syntax_message(text, exc, is_expr)
        line, col = _template_position(source, path, lineno, opener)
        checked.problems.append(Problem(source.file, line, col, source.display(path), message))
        return set()
    except RecursionError:
        checked.problems.append(
            source.problem(path, "template nested too deeply to check: simplify it")
        )
        return set()
    found: set[str] = set()
    where = str(path[-1]) if is_expr else None
    for ref in refs:
        problem = _reference_problem(ref, scope, where)
        if problem:
            pattern = _reference_pattern(ref)
            line, col = _template_position(source, path, ref.lineno, pattern)
            checked.problems.append(Problem(source.file, line, col, source.display(path), problem))
        elif ref.root == "steps" and ref.key:
            found.add(ref.key)
    return found


def _reference_problem(ref: Reference, scope: _Scope, where: str | None) -> str | None:
    root, key = ref.root, ref.key
    if root == "steps":
        if not scope.steps_allowed:
            return "tool settings cannot use step outputs: they are fixed for the whole run"
        if key is None:
            return (
                "steps must be referenced by a literal id, e.g. steps.fetch.output "
                'or steps["my-step"].output'
            )
        if key not in scope.ids:
            todo = "add a step with this id, or fix the reference"
            return _unknown("step", key, scope.ids, todo, budget=scope.suggestions)
        if ref.attr is not None and ref.attr not in _STEP_ATTRS:
            return f"steps.{key} has no '{ref.attr}': use steps.{key}.output or .status"
        return None
    if root in ("item", "index"):
        if where == "foreach":
            return f"'{root}' is not defined in foreach: foreach gives the list the items come from"
        if where is not None and scope.foreach:
            return (
                f"'{root}' is not defined in {where}: {where} is evaluated once, before the items; "
                "filter the list in foreach instead"
            )
        if scope.foreach:
            return None
        return f"'{root}' is only defined in a foreach step: add foreach: <list> to this step, or use a step output"
    if root == "run":
        return None if key in (None, "id") else f"run has no '{key}': only run.id"
    if root in (FILTER, TEST):
        what = "filter" if root == FILTER else "test"
        known = environment().filters if root == FILTER else environment().tests
        hint = did_you_mean(str(key), set(known))
        return f"unknown Jinja {what} '{key}'" + (hint or f": use one of Jinja's built-in {what}s")
    if root not in ROOTS:
        return f"unknown name '{root}'{did_you_mean(root, ROOTS)}: {_CONTEXT}"
    declared = {"inputs": scope.inputs, "env": scope.env, "secrets": scope.secrets}[root]
    if root == "secrets" and not scope.secrets_allowed and (key is None or key in declared):
        return (
            f"secrets.{key or '…'} can only be handed to a program: use it in a run step's env:, "
            "an MCP server's env: or a tool's headers:, never in prompts, arguments or outputs"
        )
    if key is None or key in declared:
        return None
    if root == "inputs":
        return _unknown(
            "input", key, declared, "declare it under `inputs:`", budget=scope.suggestions
        )
    return f"{root}.{key} is not declared: add {key} to `{root}:` at the top of the pipeline"


def _reference_pattern(ref: Reference) -> re.Pattern[str]:
    if ref.root in (FILTER, TEST):
        sign = r"\|" if ref.root == FILTER else r"\bis(?:\s+not)?"
        return re.compile(rf"{sign}\s*{re.escape(str(ref.key))}\b")
    pattern = rf"(?<![\w.]){re.escape(ref.root)}\b"
    if ref.key:
        key = re.escape(ref.key)
        pattern += rf"\s*(?:\.\s*{key}(?!\w)|\[\s*['\"]{key}['\"])"
    return re.compile(pattern)


_TOKEN_NAMES = {
    "'end of print statement'": "'}}'",
    "'end of statement block'": "'%}'",
    "'begin of print statement'": "'{{'",
    "'end of template'": "the end of the template",
}
_BLOCK_TAG = re.compile(r"\{%[-+]?\s*(\w+)")
_ONE_TAG = re.compile(r"\{[{%](?!.*\{[{%])")  # the only tag opener on a line
_BLOCKS = {"for", "if", "macro", "call", "filter", "with", "block", "autoescape", "raw", "trans"}


def _syntax_message(text: str, exc: TemplateSyntaxError, is_expr: bool) -> tuple[str, int, Any]:
    """The message, the template line, and what to look for on it."""
    what = "expression" if is_expr else "template"
    message = exc.message or "syntax error"
    unclosed = re.search(r"innermost block that needs to be closed is '(\w+)'", message)
    if unclosed and message.startswith("Unexpected end of template") and not is_expr:
        opener = _innermost_open(text, unclosed.group(1))
        if opener is not None:
            name, lineno = unclosed.group(1), opener[0]
            return (
                f"Jinja {what} syntax error: {{% {name} %}} is never closed: add {{% end{name} %}}",
                lineno,
                re.compile(r"\{%[-+]?\s*" + name + r"\b"),
            )
    for jinja_name, shown in _TOKEN_NAMES.items():
        message = message.replace(
            jinja_name, "end of expression" if is_expr and shown == "'}}'" else shown
        )
    tag = re.search(r"unknown tag '(\w+)'", message)
    if tag:
        wanted = re.findall(r"'(\w+)'", message.partition("looking for")[2].partition(".")[0])
        name = tag.group(1)
        message = f"unknown tag '{name}'{did_you_mean(name, wanted or _BLOCKS)}"
        if wanted:
            message += f": the open block needs one of {', '.join(wanted)}"
        return (
            f"Jinja {what} syntax error: {message}",
            exc.lineno or 1,
            re.compile(r"\{%[-+]?\s*" + name + r"\b"),
        )
    return f"Jinja {what} syntax error: {message}", exc.lineno or 1, _ONE_TAG


def _innermost_open(text: str, name: str) -> tuple[int] | None:
    """Template line of the innermost block tag `name` that has no end tag."""
    stack: list[tuple[str, int]] = []
    for match in _BLOCK_TAG.finditer(text):
        tag = match.group(1)
        lineno = text.count("\n", 0, match.start()) + 1
        if tag in _BLOCKS or (
            tag == "set" and "=" not in text[match.end() : text.find("%}", match.end())]
        ):
            stack.append((tag, lineno))
        elif tag.startswith("end") and stack and stack[-1][0] == tag[3:]:
            stack.pop()
    opened = [lineno for tag, lineno in stack if tag == name]
    return (opened[-1],) if opened else None


def _template_position(
    source: Source, path: Path, lineno: int, pattern: re.Pattern[str] | None
) -> tuple[int, int]:
    """Where template line `lineno` (and `pattern` on it, if given) is in the file."""
    line, col = source.where(path)
    if path in source.block_scalars:  # `|`: template line n is the n-th line below the key
        file_line = line + lineno
        content = source.line(file_line)
        indent = len(content) - len(content.lstrip())
        match = pattern.search(content, indent) if pattern else None
        return file_line, (match.start() if match else indent) + 1
    end_line = source.ends.get(path, (line, col))[0]
    for number in range(line, end_line + 1):  # quoted, plain or folded: YAML joined the lines
        content = source.line(number)
        match = pattern.search(content, col - 1 if number == line else 0) if pattern else None
        if match:
            return number, match.start() + 1
    if path not in source.folded and end_line == line:
        return line, col
    return min(line + lineno - 1, end_line), col if lineno == 1 else 1


def _check_kind_fields(source: Source, i: int, step: dict[str, Any], checked: Checked) -> None:
    kinds = [k for k in KINDS if k in step]
    if len(kinds) != 1:
        return  # the schema reports zero or several kinds
    kind = kinds[0]
    misplaced = [f for f in LLM_FIELDS if f in step] if kind != "prompt" else []
    if kind != "tool" and "with" in step:
        misplaced.append("with")
    if kind != "run" and "env" in step:
        misplaced.append("env")
    for name in misplaced:
        owner = {"with": "tool", "env": "run"}.get(name, "prompt")
        checked.problems.append(
            source.problem(
                ("steps", i, name),
                f"'{name}' only applies to {owner} steps, and this is a {kind} step: remove it",
                key=True,
            )
        )


def _check_tool_use(
    source: Source, i: int, step: dict[str, Any], tools: dict, checked: Checked
) -> None:
    if isinstance(step.get("tool"), str):
        name, _, remote = step["tool"].partition(".")
        problem = _tool_step_problem(name, remote, tools)
        if problem:
            checked.problems.append(source.problem(("steps", i, "tool"), problem))
    if "prompt" in step and isinstance(step.get("tools"), list):
        for j, name in enumerate(step["tools"]):
            if isinstance(name, str) and name not in tools:
                checked.problems.append(
                    source.problem(("steps", i, "tools", j), _unknown_tool(name, tools))
                )


def _check_provider(source: Source, path: Path, name: Any, data: dict, checked: Checked) -> None:
    """`provider:` names a provider of the pipeline or of the user settings."""
    if not isinstance(name, str):
        return  # absent, or the schema's problem
    declared = data.get("providers")
    known = set(declared) if isinstance(declared, dict) else set()
    if name in known:
        return
    known |= set(load_user_settings().providers)
    if name not in known:
        todo = "declare it under `providers:` (or in the user settings file)"
        checked.problems.append(source.problem(path, _unknown("provider", name, known, todo)))


def _unknown_tool(name: str, tools: dict) -> str:
    if name in _HOSTED:
        return f"unknown tool '{name}': declare it under `tools:` as {name}: {{type: {name}}}"
    return _unknown("tool", name, set(tools), "define it under `tools:`")


def _tool_step_problem(name: str, remote: str, tools: dict) -> str | None:
    if name not in tools:
        return _unknown_tool(name, tools)
    tool = tools[name]
    if not isinstance(tool, dict):
        return None
    kind = tool.get("type")
    if kind == "function" and remote:
        return f"'{name}' is a function tool: call it as tool: {name}"
    if kind == "mcp":
        if "server_url" in tool:
            return f"'{name}' is a hosted MCP server run by the LLM provider: offer it to a prompt step with tools: [{name}]"
        if not remote:
            return f"'{name}' is an MCP server: name the remote tool, e.g. tool: {name}.<tool name>"
        allowed = tool.get("allowed_tools")
        if isinstance(allowed, list) and remote not in allowed:
            return (
                f"MCP tool '{remote}' is not in allowed_tools of '{name}' "
                f"({', '.join(map(str, allowed))}): use one of those, or add it to allowed_tools"
            )
    if kind in _HOSTED:
        return f"'{name}' ({kind}) is run by the LLM provider: offer it to a prompt step with tools: [{name}]"
    return None


def _check_cycles(source: Source, steps: list[tuple[int, dict]], checked: Checked) -> None:
    index: dict[str, int] = {}
    for i, step in steps:
        index.setdefault(step["id"], i)
    if all(index[dep] < index[sid] for sid, deps in checked.deps.items() for dep in deps):
        return  # every step needs only steps above it, so there is no cycle to look for
    from stepchain.pipeline.graph import (  # networkx only when it can matter
        build_graph,
        find_cycles,
    )

    graph = build_graph(checked.deps)
    for cycle in find_cycles(graph, list(index)):
        if len(cycle) == 2:
            message = (
                f"cycle: {cycle[0]} -> {cycle[0]}: a step cannot depend on itself; "
                "use an earlier step's output instead"
            )
        else:
            message = (
                f"cycle: {' -> '.join(cycle)}: a step cannot wait for itself; "
                "remove one of these dependencies"
            )
        checked.problems.append(source.problem(("steps", index[cycle[0]], "id"), message))
