"""Cache keys: the SHA-256 of canonical JSON of everything that determines a step's result."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump when what goes into a key or an entry changes meaning; every older entry then misses.
# 2: entries are canonical JSON text in a plain diskcache (1 was diskcache's JSONDisk).
CACHE_FORMAT = 2

_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)  # one encoder: json.dumps with options builds a new one per call


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, unicode as is; values JSON cannot hold are written as str()."""
    return _CANONICAL.encode(value)


def cache_key(kind: str, request: Any, *, version: int = CACHE_FORMAT) -> str:
    """SHA-256 (hex) of canonical JSON of everything that determines a step's result.

    `version` gives the key an older format gave the same request (run records made before a
    format change hold such keys).
    """
    payload = canonical_json({"format": version, "kind": kind, "request": request})
    return hashlib.sha256(payload.encode()).hexdigest()
