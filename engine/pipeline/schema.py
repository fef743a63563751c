"""The pipeline JSON Schema: loading it from the package and turning its errors into problems.

Steps are validated one by one, and each distinct step *shape* only once: free text, argument
mappings and names that already fit their pattern do not change what the schema says about a step,
so a 10,000-step pipeline costs a handful of schema evaluations. Messages are written from the
actual values, never from the representative that was validated.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from stepchain.errors import Problem
from stepchain.pipeline.definition import KINDS
from stepchain.pipeline.yaml_source import Path, Source

# fields a v1 pipeline does not have, and what the writer most likely meant
# fmt: off
_SYNONYMS = {
    "dependencies": "needs", "depends_on": "needs", "after": "needs", "max_retries": "retries",
    "retry": "retries", "goal": "description", "command": "run", "cmd": "run", "shell": "run",
    "args": "with", "arguments": "with", "params": "with", "condition": "when", "if": "when",
    "for_each": "foreach", "loop": "foreach", "user": "prompt", "instructions": "system",
    "schema": "output_schema", "response_format": "output_schema", "timeout_seconds": "timeout",
}
_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "array": "a list", "object": "a mapping", "null": "empty",
}
# fmt: on


def schema_text() -> str:
    """The pipeline schema as shipped inside the package."""
    return resources.files("stepchain").joinpath("schemas/pipeline.schema.json").read_text()


@lru_cache(maxsize=1)
def pipeline_schema() -> dict[str, Any]:
    return json.loads(schema_text())


@lru_cache(maxsize=1)
def _validators() -> tuple[Draft202012Validator, Draft202012Validator]:
    """One validator for the document without its steps, one for a single step."""
    schema = pipeline_schema()
    top = json.loads(json.dumps(schema))
    top["properties"]["steps"]["items"] = True
    step = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/step"}
    return Draft202012Validator(top), Draft202012Validator(step)


@lru_cache(maxsize=1)
def _patterns() -> dict[str, re.Pattern[str]]:
    props = pipeline_schema()["$defs"]["step"]["properties"]
    return {name: re.compile(props[name]["pattern"]) for name in ("id", "tool")}


def schema_problems(source: Source) -> list[Problem]:
    """Every schema violation in the document, each at its position."""
    top, one_step = _validators()
    data = source.data
    problems = [p for e in top.iter_errors(data) for p in _translate(source, e, (), data)]
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list):
        return problems
    seen: dict[str, list[ValidationError]] = {}
    for i, step in enumerate(steps):
        key = _shape(step)
        errors = seen.get(key) if key is not None else None
        if errors is None:
            errors = list(one_step.iter_errors(step))
            if key is not None:
                seen[key] = errors
        for error in errors:
            problems.extend(_translate(source, error, ("steps", i), step))
    return problems


def translate_errors(source: Source, errors: Iterable[ValidationError]) -> list[Problem]:
    """Schema errors of the whole document as problems at their positions."""
    return [p for e in errors for p in _translate(source, e, (), source.data)]


def _shape(step: Any) -> str | None:
    """A key equal for steps the schema cannot tell apart; None when not worth computing."""
    if not isinstance(step, dict):
        return None
    patterns = _patterns()
    shape: dict[str, Any] = {}
    for name, value in step.items():
        kept: Any = [0, value]  # [1, marker] when the value is valid whatever it says
        if isinstance(value, str) and value:
            if name not in patterns and name not in ("cache", "api"):
                kept = [1, "text"]
            elif name in patterns and patterns[name].fullmatch(value):
                kept = [1, "matches"]
        elif name in ("with", "output_schema") and isinstance(value, dict):
            kept = [1, "mapping"]
        elif name in ("needs", "tools", "run") and value and _unique_strings(value):
            kept = [1, "names"]
        shape[name] = kept
    try:
        return json.dumps(shape, sort_keys=True)
    except (TypeError, ValueError):  # pragma: no cover - YAML only yields JSON types
        return None


def _unique_strings(value: Any) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, str) for v in value)
        and len(set(value)) == len(value)
    )


def did_you_mean(word: str, choices: list[str] | set[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _translate(source: Source, error: ValidationError, prefix: Path, root: Any) -> list[Problem]:
    rel = tuple(error.absolute_path)
    path = (*prefix, *rel)
    if path in source.reported:
        return []  # the YAML 1.1 problem at this value already says what to write
    instance = _get(root, rel)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = set(schema.get("properties", {}))
        return [
            source.problem((*path, key), _unknown_field(path, key, allowed), key=True)
            for key in instance
            if key not in allowed
        ]
    if kind == "propertyNames":
        return [source.problem((*path, error.instance), _bad_name(path, error.instance), key=True)]
    if kind == "oneOf" and "id" in schema.get("properties", {}):
        if not isinstance(instance, dict):
            return []  # a step that is not a mapping: its type error says so
        allowed = schema.get("properties", {})
        if any(did_you_mean(k, KINDS) for k in instance if k not in allowed):
            return []  # `promt:` is reported as an unknown field, with the kind it meant
    return [source.problem(path, _message(path, kind, instance, schema, error))]


def _get(root: Any, rel: tuple) -> Any:
    for part in rel:
        try:
            root = root[part]
        except (KeyError, IndexError, TypeError):  # pragma: no cover - paths come from root
            return None
    return root


def _message(path: Path, kind: Any, instance: Any, schema: dict, error: ValidationError) -> str:
    field = _field(path)
    if kind == "required":
        return _missing(path, error.message.split("'")[1] if "'" in error.message else "")
    if kind == "type":
        return type_message(path, schema.get("type"), instance)
    if kind == "oneOf":
        return _one_of_message(path, instance, schema)
    if kind == "const" and path == ("version",):
        if isinstance(instance, str) and instance.strip() == "1":
            return "version must be the number 1, not the string '1': remove the quotes"
        return f"version must be 1 (this StepChain reads format 1), not {instance!r}"
    if kind == "pattern":
        return _pattern_message(path, instance)
    if kind == "enum":
        choices = [str(c) for c in schema.get("enum", [])]
        if len(path) == 3 and path[0] == "tools" and path[2] == "type":
            return (
                f"tool type {instance!r} is not one of {', '.join(choices)}"
                f"{did_you_mean(str(instance), choices)}: Python code is type: function"
            )
        return (
            f"{field} {instance!r} is not one of {', '.join(choices)}"
            f"{did_you_mean(str(instance), choices)}"
        )
    if kind == "minItems":
        if path == ("steps",):
            return "steps is empty: a pipeline needs at least one step"
        return f"{field} is empty: give at least one item, or remove {field}"
    if kind == "minLength":
        return f"{field} is empty: write an expression such as inputs.n > 5, or remove {field}"
    if kind == "exclusiveMinimum":
        return f"{field} must be greater than {schema['exclusiveMinimum']}, not {instance!r}"
    if kind == "uniqueItems" and isinstance(instance, list):
        twice = next(v for i, v in enumerate(instance) if v in instance[:i])
        return f"{field} lists {twice!r} more than once: list each once"
    return error.message


def _field(path: Path) -> str:
    named = [p for p in path if isinstance(p, str)]
    return named[-1] if named else "the pipeline"


def _owner(path: Path) -> str:
    if not path:
        return "a pipeline"
    if len(path) == 2 and path[0] == "steps":
        return "a step"
    if len(path) == 2 and path[0] == "tools":
        return "this tool"
    return str(_field(path))


def _unknown_field(path: Path, key: str, allowed: set[str]) -> str:
    hint = did_you_mean(key, allowed)
    if not hint and _SYNONYMS.get(key) in allowed:
        hint = f" (did you mean '{_SYNONYMS[key]}'?)"
    if hint:
        return f"unknown field '{key}'{hint}"
    defaults = pipeline_schema()["$defs"]["defaults"]["properties"]
    if not path and key in defaults:
        return f"unknown field '{key}': put it under `defaults:` to apply it to every step"
    if len(allowed) <= 12:
        return f"unknown field '{key}': {_owner(path)} takes {', '.join(sorted(allowed))}"
    return f"unknown field '{key}': remove it (`stepchain schema` lists the fields {_owner(path)} takes)"


def _missing(path: Path, name: str) -> str:
    hints = {
        "version": "add `version: 1`",
        "name": "add a name such as `name: my-pipeline`",
        "steps": "add `steps:` with a list of steps",
        "id": "give the step a unique id, such as `id: fetch`",
        "type": "add `type: function`, `mcp`, `web_search`, `file_search` or `code_interpreter`",
        "function": "add `function: module:attribute`",
    }
    return f"missing required field '{name}': {hints.get(name, f'add {name}')}"


def type_message(path: Path, expected: Any, instance: Any) -> str:
    """`field must be <type>, not <what it is>`, and how to fix the commonest slips."""
    types = expected if isinstance(expected, list) else [expected]
    wanted = " or ".join(_TYPE_NAMES.get(t, str(t)) for t in types)
    field = _field(path)
    if len(path) == 2 and path[0] == "steps":
        return (
            "a step must be a mapping with an id and one of prompt, tool, run or template, "
            f"not {_describe(instance)}"
        )
    if len(path) == 2 and path[0] == "inputs":
        example = instance if isinstance(instance, str) and instance in _TYPE_NAMES else "string"
        return (
            f"input '{path[1]}' must be a JSON Schema mapping such as {{type: {example}}}, "
            f"not {_describe(instance)}"
        )
    if instance is None:
        return f"{field} is empty: give {wanted}"
    if path == ("steps",) and isinstance(instance, dict):
        return "steps must be a list, not a mapping: start each step with '- id: ...'"
    message = f"{field} must be {wanted}, not {_describe(instance)}"
    if field == "timeout":
        return f"{message}: give seconds, e.g. timeout: 60"
    if isinstance(instance, str):
        text = instance.strip()
        if "array" in types and "\n" not in text:
            return f"{message}: write [{text}]"
        if types[0] in ("integer", "number") and re.fullmatch(r"[-+]?[0-9.]+", text):
            return f"{message}: remove the quotes"
        if "boolean" in types and text.lower() in ("true", "false"):
            return f"{message}: remove the quotes"
    if "string" in types and isinstance(instance, (bool, int, float)):
        shown = str(instance).lower() if isinstance(instance, bool) else str(instance)
        return f'{message}: quote it ("{shown}")'
    if types == ["integer"] and isinstance(instance, float):
        return f"{message}: use a whole number"
    if "array" in types and isinstance(instance, dict):
        names = ", ".join(list(instance)[:3])
        return f"{message}: write a list, e.g. {field}: [{names}]"
    if "object" in types and isinstance(instance, list):
        return f"{message}: write name: value pairs"
    return message


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "empty (null)"


def _pattern_message(path: Path, instance: Any) -> str:
    if path == ("name",):
        return (
            f"name {instance!r} must start with a letter or digit and use only letters, "
            "digits, _, . and -"
        )
    last = path[-1] if path else ""
    if last == "id":
        return (
            f"step id {instance!r} must start with a letter or _ and use only letters, "
            "digits, _ and -"
        )
    if last == "tool":
        return f"tool {instance!r} must be <tool>, or <mcp tool>.<remote tool> for MCP servers"
    if last == "function":
        return f"function {instance!r} must be module:attribute, such as finance:calculate_roi"
    if last == "url":
        return f"url {instance!r} must start with http:// or https://"
    if path and path[0] in ("env", "secrets"):
        what = "environment variable" if path[0] == "env" else "secret"
        return f"{what} name {instance!r} must use only letters, digits and _, and not start with a digit"
    return f"{instance!r} does not have the expected form"


def _bad_name(path: Path, name: Any) -> str:
    if path == ("inputs",):
        return (
            f"input name {name!r} must use only letters, digits and _, and not start with a digit"
        )
    if path == ("tools",):
        return f"tool name {name!r} must start with a letter or _ and use only letters, digits, _ and -"
    return f"name {name!r} does not have the expected form"


def _one_of_message(path: Path, instance: Any, schema: dict[str, Any]) -> str:
    if isinstance(instance, dict) and "id" in schema.get("properties", {}):
        kinds = [k for k in KINDS if k in instance]
        if not kinds:
            return "step has no kind: give exactly one of prompt, tool, run or template"
        return (
            f"step has several kinds ({', '.join(kinds)}): keep one, or split it into several steps"
        )
    if path and path[-1] == "cache":
        return f'cache must be true, false or a TTL like "12h" or "7d", not {instance!r}'
    if path and path[-1] == "run":
        return "run must be a command string or a non-empty list of strings (argv)"
    if isinstance(instance, dict) and instance.get("type") == "mcp":
        given = [k for k in ("command", "url", "server_url") if k in instance]
        if not given:
            return "an mcp tool needs one of command (stdio), url (streamable HTTP) or server_url (hosted)"
        return f"an mcp tool takes only one of command, url or server_url, not {' and '.join(given)}: keep one"
    return f"{instance!r} does not match any allowed form"


# -- JSON Schemas written inside a pipeline: an input's schema, a step's output_schema -----------
_JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_KEYWORDS = set(Draft202012Validator.META_SCHEMA.get("properties", {})) | {
    "$schema", "$id", "$ref", "$defs", "$anchor", "$dynamicRef", "$dynamicAnchor", "$comment",
    "$vocabulary", "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "maxContains", "minContains", "maxProperties", "minProperties", "required", "dependentRequired",
    "properties", "patternProperties", "additionalProperties", "propertyNames", "items",
    "prefixItems", "contains", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
    "dependentSchemas", "unevaluatedItems", "unevaluatedProperties", "title", "description",
    "default", "deprecated", "readOnly", "writeOnly", "examples", "format", "contentEncoding",
    "contentMediaType", "contentSchema", "definitions", "dependencies",
}  # fmt: skip
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                  "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema")  # fmt: skip


def user_schema_problems(source: Source, path: Path, schema: Any, what: str) -> list[Problem]:
    """Problems of a JSON Schema the pipeline declares, each at its place in the file."""
    if not isinstance(schema, dict):
        return []
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):  # pragma: no cover - YAML only yields JSON types
        return []
    return [
        source.problem((*path, *rel), f"{what}: {message}", key=True)
        if typo
        else source.problem((*path, *rel), f"{what} is not a valid JSON Schema: {message}")
        for rel, message, typo in _user_schema_findings(key)
    ]


@lru_cache(maxsize=1024)
def _user_schema_findings(key: str) -> list[tuple[tuple, str, bool]]:
    """(place in the schema, message, is a misspelt keyword) for one schema, as canonical JSON."""
    schema = json.loads(key)
    findings: dict[tuple, tuple[str, bool]] = {}
    try:
        for error in Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema):
            rel = tuple(error.absolute_path)
            findings.setdefault(rel, (_meta_message(rel, error), False))
    except RecursionError:
        return [((), "nested too deeply to check: simplify it", False)]
    for rel, word in _unknown_keywords(schema, ()):
        message = (
            f"unknown keyword '{word}'{did_you_mean(word, _KEYWORDS)}: "
            "JSON Schema ignores unknown keywords, so this one checks nothing"
        )
        findings.setdefault(rel, (message, True))
    return sorted(
        ((rel, *found) for rel, found in findings.items()), key=lambda f: [str(p) for p in f[0]]
    )


def _meta_message(rel: tuple, error: ValidationError) -> str:
    instance = error.instance
    if (rel and rel[-1] == "type") or (len(rel) > 1 and rel[-2] == "type"):
        bad = [
            t
            for t in (instance if isinstance(instance, list) else [instance])
            if t not in _JSON_TYPES
        ]
        if bad and all(isinstance(t, str) for t in bad):
            return (
                f"'{bad[0]}' is not a JSON Schema type{did_you_mean(bad[0], _JSON_TYPES)}: "
                f"use {', '.join(_JSON_TYPES[:-1])} or null"
            )
    if len(rel) > 1 and rel[-2] in _SCHEMA_MAPS and instance in _JSON_TYPES:
        return f"'{rel[-1]}' must be a schema, e.g. {rel[-1]}: {{type: {instance}}}"
    if error.validator == "type":
        return type_message(rel, error.validator_value, instance)
    return error.message


def _unknown_keywords(schema: Any, rel: tuple) -> list[tuple[tuple, str]]:
    """Keys of a schema that look like a misspelt keyword (propertes, requred, ...)."""
    if not isinstance(schema, dict):
        return []
    found = [
        ((*rel, k), k)
        for k in schema
        if k not in _KEYWORDS and did_you_mean(k, _KEYWORDS) and not k.startswith("x-")
    ]
    for name, value in schema.items():
        if name in _SCHEMA_MAPS and isinstance(value, dict):
            for prop, sub in value.items():
                found += _unknown_keywords(sub, (*rel, name, prop))
        elif name in _SCHEMA_LISTS and isinstance(value, list):
            for i, sub in enumerate(value):
                found += _unknown_keywords(sub, (*rel, name, i))
        elif name in _SCHEMA_VALUES:
            found += _unknown_keywords(value, (*rel, name))
    return found
