"""Masking secret values wherever they could leave the process: records, cache, logs, errors.

Each secret is masked as written and in the forms a program or a template filter commonly turns
it into: reversed, upper and lower case, JSON-escaped, URL-encoded, HTML-escaped and base64.
A secret shorter than MIN_SECRET characters is refused before a run (context.preflight): masking
it would mangle unrelated text.
"""

from __future__ import annotations

import base64
import html
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET = 4
# escape sequences (CSI, OSC, two-byte) first, then any other C0/C1 control but tab and newline
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|.)?", re.DOTALL)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text from a server or a program without terminal control codes (colours, cursor moves,
    title changes, clear-screen): safe to print."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def variants(secret: str) -> set[str]:
    """The secret and its common transformed forms."""
    raw = secret.encode()
    forms = {
        secret,
        secret[::-1],
        secret.upper(),
        secret.lower(),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        html.escape(secret),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
    }
    return {f for f in forms if len(f) >= MIN_SECRET}


class Masker:
    """Replaces every occurrence of the given secret values (and their variants) with ***."""

    def __init__(self, values: list[str]) -> None:
        # longest first, so a secret that contains another is masked whole
        forms = {form for v in values if v for form in variants(v)}
        self.values = sorted(forms, key=len, reverse=True)

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
