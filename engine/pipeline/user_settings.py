"""User settings: the providers and account rate limits a pipeline file need not carry.

`settings.yaml` in the state folder ($STEPCHAIN_HOME or .stepchain/), or the file that
$STEPCHAIN_SETTINGS names, in the shape of a pipeline's own sections:

    providers:
      local: {base_url: "http://localhost:11434/v1", api_key_env: OLLAMA_KEY, api: chat}
    limits:
      gpt-4o-mini: {rpm: 500, tpm: 200000}

A pipeline's `providers:` entry of the same name wins over the settings' one; declared limits
from the settings, the pipeline and $STEPCHAIN_LIMITS all hold (the lowest wins). The file is
checked against the same schema definitions as a pipeline, with FILE:LINE:COL positions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from stepchain.errors import UsageError
from stepchain.pipeline.files import read_user_file
from stepchain.pipeline.schema import pipeline_schema, translate_errors
from stepchain.pipeline.yaml_source import load_source
from stepchain.settings import Settings, current_settings

__all__ = ["SETTINGS_VAR", "UserSettings", "load_user_settings"]

SETTINGS_VAR = "STEPCHAIN_SETTINGS"


@dataclass(frozen=True)
class UserSettings:
    """The parts of the user settings a run uses (plain, schema-checked mappings)."""

    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)


def load_user_settings(settings: Settings | None = None) -> UserSettings:
    """The user settings, or none when the default file does not exist.

    Raises:
        UsageError: the file cannot be read or does not match the schema (every problem listed).
    """
    path = current_settings(settings).user_file
    if not os.environ.get(SETTINGS_VAR) and not os.path.lexists(path):
        return UserSettings()  # no settings file: nothing to add (a named one must exist)
    text = read_user_file(path, "settings file", UsageError)
    source = load_source(str(path), text)
    problems = list(source.problems)
    if source.data is None and not problems:
        return UserSettings()  # an empty file
    if not problems:
        errors = _validator().iter_errors(source.data)
        problems += translate_errors(source, errors)
    if problems:
        listed = "\n".join(p.format() for p in sorted(set(problems)))
        raise UsageError(
            f"{len(set(problems))} problem(s) in the settings file:\n{listed}",
            "fix the lines above (or point STEPCHAIN_SETTINGS at another file)",
        )
    data = source.data
    return UserSettings(dict(data.get("providers") or {}), dict(data.get("limits") or {}))


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    schema = pipeline_schema()
    shape = {
        "$schema": schema["$schema"],
        "$defs": schema["$defs"],
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "providers": schema["properties"]["providers"],
            "limits": schema["properties"]["limits"],
        },
    }
    # the providers' limits refer to #/properties/limits, which this document also has
    return Draft202012Validator(json.loads(json.dumps(shape)))
