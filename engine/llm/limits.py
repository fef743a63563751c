"""Declared rate limits: `limits: {MODEL: {rpm: N, tpm: N}}` in a pipeline (or a provider), in
the user settings file, and the `STEPCHAIN_LIMITS` environment variable in the same shape (JSON)
for the user's account."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stepchain.errors import UsageError

__all__ = ["ENV_VAR", "Limits", "declared_limits", "limits_from_env", "lower", "parse_limits"]

ENV_VAR = "STEPCHAIN_LIMITS"


@dataclass(frozen=True)
class Limits:
    """Declared limits of one model: requests and tokens per minute (None: unknown)."""

    rpm: float | None = None
    tpm: float | None = None


def limits_from_env() -> dict[str, Limits]:
    """`STEPCHAIN_LIMITS` (JSON: {MODEL: {rpm: N, tpm: N}}); UsageError when malformed."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
        return parse_limits(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"{ENV_VAR} is not valid: {exc}",
            'set it to JSON like {"gpt-4o-mini": {"rpm": 500, "tpm": 200000}}',
        ) from None


def declared_limits(*declared: Mapping[str, Any] | None) -> dict[str, Limits]:
    """`STEPCHAIN_LIMITS` and each `limits:` section given (the pipeline's, the user
    settings'), together; for each model the lowest of each limit wins."""
    merged = limits_from_env()
    for section in declared:
        for model, limits in parse_limits(dict(section or {})).items():
            other = merged.get(model, Limits())
            merged[model] = Limits(lower(limits.rpm, other.rpm), lower(limits.tpm, other.tpm))
    return merged


def lower(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def parse_limits(data: Any) -> dict[str, Limits]:
    """{MODEL: {rpm, tpm}} as Limits; ValueError for anything else."""
    if not isinstance(data, dict):
        raise ValueError("expected an object of model -> {rpm, tpm}")
    out = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or set(entry) - {"rpm", "tpm"}:
            raise ValueError(f"{model}: expected {{rpm: N, tpm: N}}")
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{model}.{key} must be a positive number")
        out[str(model)] = Limits(entry.get("rpm"), entry.get("tpm"))
    return out
