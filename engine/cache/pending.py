"""A run's new cache entries on their way to the cache, batched (see PendingWrites)."""

from __future__ import annotations

import time
from typing import Any

from stepchain.cache.store import ResultCache, entry_text, read_entry

FLUSH_ENTRIES = 1000  # write after this many results ...
FLUSH_SECONDS = 1.0  # ... or this long after the last write, whichever comes first


class PendingWrites:
    """A run's new results on their way to the cache, batched, and lookups that already see them.

    Results are written in one transaction per FLUSH_ENTRIES results or FLUSH_SECONDS, and at
    the end of the run; while steps run, the scheduler wakes up when they fall due, so the
    write mostly happens while it would be idle rather than between a step and its dependents.
    Until then a lookup finds them here as the stored JSON text gives them back, so a step gets exactly the hit
    it would get if they were written already. A process killed before a write loses only
    those cache entries: the run record has every completed step's output, so `resume` asks
    for none of them again.
    """

    def __init__(self, cache: ResultCache) -> None:
        self.cache = cache
        self._pending: dict[str, tuple[Any, dict[str, int] | None, float | None, float]] = {}
        self._written_at = time.monotonic()

    def add(self, key: str, output: Any, usage: dict[str, int] | None, ttl: float | None) -> None:
        self._pending[key] = (output, usage, ttl, time.time())

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self._pending_entry(key)
        return entry if entry is not None else self.cache.get(key)

    def lookup_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for key in keys:
            if key in self._pending and (entry := self._pending_entry(key)) is not None:
                found[key] = entry
        rest = [key for key in keys if key not in found]
        if rest:
            found.update(self.cache.lookup_many(rest))
        return found

    def due_in(self) -> float | None:
        """Seconds until the pending results are due to be written; None when there are none."""
        if not self._pending:
            return None
        return max(0.0, FLUSH_SECONDS - (time.monotonic() - self._written_at))

    def flush(self, *, force: bool = False) -> None:
        if not self._pending:
            return
        if force or self.due_in() == 0.0 or len(self._pending) >= FLUSH_ENTRIES:
            pending, self._pending = self._pending, {}
            now = time.time()
            entries = []
            for key, (output, usage, ttl, added) in pending.items():
                if ttl is not None:  # the TTL counts from when the result was made
                    ttl -= now - added
                    if ttl <= 0:
                        continue
                entries.append((key, output, usage, ttl))
            self.cache.set_many(entries)
            self._written_at = time.monotonic()

    def _pending_entry(self, key: str) -> dict[str, Any] | None:
        item = self._pending.get(key)
        if item is None:
            return None
        output, usage, ttl, written = item
        if ttl is not None and written + ttl <= time.time():
            return None  # expired, as diskcache would say
        try:  # the output and usage a read of the written entry gives
            return read_entry(entry_text(output, usage, written))
        except (TypeError, ValueError):
            return None  # not JSON: the write will leave it out too
