"""Run inputs: from -i flags and files, checked against the pipeline's declared input schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from stepchain.errors import InputError
from stepchain.pipeline.definition import Pipeline
from stepchain.pipeline.files import read_user_file
from stepchain.pipeline.schema import did_you_mean


def parse_assignments(pairs: list[str], pipeline: Pipeline) -> dict[str, Any]:
    """`-i k=v` flags; a value is JSON when its input is not a string, else text."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise InputError(f"-i {pair!r}: expected NAME=VALUE", "e.g. -i quarter='Q4 2023'")
        schema = pipeline.inputs.get(name, {})
        values[name] = raw if schema.get("type") == "string" else _json_or_text(raw)
    return values


def read_inputs_file(path: str | Path) -> dict[str, Any]:
    text = read_user_file(path, "inputs file", InputError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML or JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to read", "flatten the inputs") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: inputs must be a mapping of name to value")
    return data


def resolve_inputs(pipeline: Pipeline, given: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and validate; raises InputError saying which input and what to pass."""
    unknown = [k for k in given if k not in pipeline.inputs]
    if unknown:
        name = unknown[0]
        declared = ", ".join(pipeline.inputs) or "none"
        raise InputError(
            f"unknown input '{name}'{did_you_mean(name, set(pipeline.inputs))}",
            f"this pipeline declares: {declared}",
        )
    resolved = {}
    for name, schema in pipeline.inputs.items():
        if name in given:
            value = given[name]
        elif "default" in schema:
            value = schema["default"]
        else:
            raise InputError(f"input '{name}' is required", f"pass it with -i {name}=VALUE")
        errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: e.path)
        if errors:
            raise InputError(f"input '{name}': {errors[0].message}")
        resolved[name] = value
    return resolved


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
