"""Token usage: the counters an LLM answer reports, added up per step and per run."""

from __future__ import annotations

USAGE_KEYS = ("input_tokens", "output_tokens", "cached_tokens", "total_tokens")


def add_usage(total: dict[str, int], more: dict[str, int] | None) -> dict[str, int]:
    """Add `more`'s counters into `total` (in place) and return `total`."""
    for key, value in (more or {}).items():
        total[key] = total.get(key, 0) + int(value)
    return total
