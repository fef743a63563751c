"""The pipeline JSON Schema: loading it from the package and turning its errors into problems."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from stepchain.errors import Problem
from stepchain.model import KINDS
from stepchain.yaml_source import Source


def schema_text() -> str:
    """The pipeline schema as shipped inside the package."""
    return resources.files("stepchain").joinpath("schemas/pipeline.schema.json").read_text()


@lru_cache(maxsize=1)
def pipeline_schema() -> dict[str, Any]:
    return json.loads(schema_text())


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(pipeline_schema())


def schema_problems(source: Source) -> list[Problem]:
    """Every schema violation in the document, each at its position."""
    problems: list[Problem] = []
    for error in _validator().iter_errors(source.data):
        problems.extend(_translate(source, error))
    return problems


def did_you_mean(word: str, choices: list[str] | set[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _translate(source: Source, error: ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = set(schema.get("properties", {}))
        extra = [k for k in instance if k not in allowed]
        return [
            source.problem(
                (*path, key),
                f"unknown field '{key}'{did_you_mean(key, allowed)}",
                key=True,
            )
            for key in extra
        ]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return [source.problem(path, f"missing required field '{missing}'")]
    if error.validator == "oneOf":
        return [source.problem(path, _one_of_message(path, instance, schema))]
    if error.validator == "const" and path == ("version",):
        return [source.problem(path, f"version must be 1 (this StepChain reads format 1), not {instance!r}")]
    if error.validator == "pattern" and path and path[-1] == "id":
        return [
            source.problem(
                path,
                f"step id {instance!r} must start with a letter or _ and use only letters, "
                "digits, _ and -",
            )
        ]
    if error.validator == "pattern" and path == ("name",):
        return [
            source.problem(
                path,
                f"name {instance!r} must start with a letter or digit and use only letters, "
                "digits, _, . and -",
            )
        ]
    if error.validator == "propertyNames":
        return [source.problem(path, f"invalid name: {error.message}")]
    return [source.problem(path, error.message)]


def _one_of_message(path: tuple, instance: Any, schema: dict[str, Any]) -> str:
    if isinstance(instance, dict) and "id" in schema.get("properties", {}):
        kinds = [k for k in KINDS if k in instance]
        if not kinds:
            return "step has no kind: give exactly one of prompt, tool, run or template"
        return f"step has several kinds ({', '.join(kinds)}): give exactly one of them"
    if path and path[-1] == "cache":
        return f'cache must be true, false or a TTL like "12h" or "7d", not {instance!r}'
    if path and path[-1] == "run":
        return "run must be a command string or a non-empty list of strings"
    if isinstance(instance, dict) and instance.get("type") == "mcp":
        given = [k for k in ("command", "url", "server_url") if k in instance]
        if not given:
            return "an mcp tool needs one of command (stdio), url (streamable HTTP) or server_url (hosted)"
        return f"an mcp tool takes only one of command, url or server_url, not {', '.join(given)}"
    return f"{instance!r} does not match any allowed form"
