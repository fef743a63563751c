"""Masking secret values wherever they could leave the process: records, cache, logs, errors."""

from __future__ import annotations

from typing import Any

MASK = "***"


class Masker:
    """Replaces every occurrence of the given secret values with ***."""

    def __init__(self, values: list[str]) -> None:
        # longest first, so a secret that contains another is masked whole
        self.values = sorted({v for v in values if v}, key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.values:
            value = value.replace(secret, MASK)
        return value

    def __call__(self, value: Any) -> Any:
        if not self.values:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        return value
