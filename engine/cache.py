"""The content-addressed result cache: diskcache with JSON serialisation, never pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import time
import zlib
from collections.abc import Iterable
from typing import Any

import diskcache
from stepchain.settings import LOGGER_NAME, Settings

CACHE_FORMAT = 1  # bump when what goes into a key or an entry changes meaning
log = logging.getLogger(LOGGER_NAME)
_BROKEN = (sqlite3.DatabaseError, OSError, ValueError, zlib.error, KeyError, TypeError)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def cache_key(kind: str, request: Any) -> str:
    """SHA-256 of canonical JSON of everything that determines a step's result."""
    payload = canonical_json({"format": CACHE_FORMAT, "kind": kind, "request": request})
    return hashlib.sha256(payload.encode()).hexdigest()


class ResultCache:
    """Step results by cache key. A damaged cache degrades to misses, never to wrong results."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.ensure_home() / "cache"
        self._cache: diskcache.Cache | None = None

    def _open(self) -> diskcache.Cache | None:
        if self._cache is None:
            try:
                self._cache = self._connect()
            except _BROKEN as exc:
                aside = self.path.with_name(f"cache.damaged-{int(time.time())}")
                log.warning("cache at %s is damaged (%s); moved it to %s", self.path, exc, aside)
                shutil.move(str(self.path), aside)
                self._cache = self._connect()
        return self._cache

    def _connect(self) -> diskcache.Cache:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.chmod(0o700)
        return diskcache.Cache(str(self.path), disk=diskcache.JSONDisk, disk_compress_level=1)

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            entry = self._open().get(key)
        except _BROKEN as exc:
            log.warning("cache entry %s unreadable (%s); recomputing", key[:12], exc)
            return None
        if not isinstance(entry, dict) or "output" not in entry:
            return None
        return entry

    def set(self, key: str, output: Any, usage: dict[str, int] | None, ttl: float | None) -> None:
        entry = {"output": output, "usage": usage or {}, "created_at": time.time()}
        try:
            self._open().set(key, entry, expire=ttl)
        except _BROKEN as exc:
            log.warning("could not write cache entry %s (%s)", key[:12], exc)

    def set_many(self, entries: list[tuple[str, Any, dict[str, int] | None, float | None]]) -> None:
        """Store several results in one transaction (one commit instead of one per result)."""
        if not entries:
            return
        try:
            cache = self._open()
            with cache.transact():
                for key, output, usage, ttl in entries:
                    entry = {"output": output, "usage": usage or {}, "created_at": time.time()}
                    cache.set(key, entry, expire=ttl)
        except _BROKEN as exc:
            log.warning("could not write %d cache entries (%s)", len(entries), exc)

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def info(self) -> dict[str, Any]:
        cache = self._open()
        return {"path": str(self.path), "entries": len(cache), "bytes": cache.volume()}

    def clear(self) -> int:
        return self._open().clear()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The entries of those `keys` that are in the cache, as get() returns them, read with one
        query per few hundred keys instead of one per key (`stepchain plan` looks up thousands).

        Added for planning; falls back to get() per key where diskcache would do more than read
        (statistics on, or an eviction policy that records each access). `keys` is iterated
        only when the cache holds anything, so a caller may compute them lazily.
        """
        found: dict[str, dict[str, Any]] = {}
        rows: list[tuple] | None = None
        try:
            cache = self._open()
            policy = diskcache.core.EVICTION_POLICY[cache.eviction_policy]
            batched = not cache.statistics and policy["get"] is None
            if batched and not cache._sql("SELECT 1 FROM Cache LIMIT 1").fetchall():
                return found  # an empty cache (a first plan) holds none of them
        except _BROKEN as exc:
            log.warning("cache unreadable (%s); looking entries up one by one", exc)
            batched = False
        keys = list(keys)
        if batched:
            try:
                by_db_key = {bytes(cache.disk.put(key)[0]): key for key in dict.fromkeys(keys)}
                pending, rows, now = list(by_db_key), [], time.time()
                for start in range(0, len(pending), 500):
                    chunk = pending[start : start + 500]
                    rows += cache._sql(
                        "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN"
                        f" ({','.join('?' * len(chunk))})"
                        " AND (expire_time IS NULL OR expire_time > ?)",
                        (*chunk, now),
                    ).fetchall()
            except _BROKEN as exc:
                log.warning("cache unreadable (%s); looking entries up one by one", exc)
                rows = None
        if rows is None:
            for key in keys:
                entry = self.get(key)
                if entry is not None:
                    found[key] = entry
            return found
        for db_key, mode, filename, value in rows:
            key = by_db_key[bytes(db_key)]
            try:
                entry = cache.disk.fetch(mode, filename, value, False)
            except OSError:  # deleted since the query, as get() treats it
                continue
            except _BROKEN as exc:
                log.warning("cache entry %s unreadable (%s); recomputing", key[:12], exc)
                continue
            if isinstance(entry, dict) and "output" in entry:
                found[key] = entry
        return found
