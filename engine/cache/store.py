"""The content-addressed result cache: a diskcache folder, used through its public API only.

Each entry is canonical JSON text, `{"created_at", "output", "usage"}`, stored as a `str`: diskcache
keeps a str as text, never pickled. Keys are the hex SHA-256 strings of `cache_key`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

import diskcache
from stepchain.cache.keys import CACHE_FORMAT, cache_key, canonical_json
from stepchain.errors import StepChainError
from stepchain.settings import LOGGER_NAME, Settings

# cache_key, canonical_json and CACHE_FORMAT live in stepchain.cache.keys; also importable from
# here (and from stepchain.cache) for modules that import them with ResultCache.
__all__ = [
    "CACHE_FORMAT",
    "ResultCache",
    "cache_key",
    "canonical_json",
    "entry_text",
    "read_entry",
]

log = logging.getLogger(LOGGER_NAME)

# What opening or writing a damaged cache raises (diskcache is SQLite plus files); on open, also
# what a folder of another layout raises (format 1's JSONDisk settings make `Disk()` a TypeError).
_BROKEN = (sqlite3.Error, OSError, ValueError, TypeError, KeyError, diskcache.Timeout)

_ENTRY = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)

Entry = tuple[str, Any, dict[str, int] | None, float | None]  # key, output, usage, ttl (seconds)


def entry_text(output: Any, usage: dict[str, int] | None, created_at: float) -> str:
    """The canonical JSON text stored for a result.

    Raises:
        TypeError, ValueError: the result is not JSON (nothing may be written for it).
    """
    entry = {"created_at": created_at, "output": output, "usage": usage or {}}
    try:
        return _ENTRY.encode(entry)
    except TypeError:
        # keys of mixed types ({1: .., "a": ..}) cannot be sorted as they are: sort them as the
        # strings JSON makes of them (a value that is not JSON raises again here)
        return _ENTRY.encode(json.loads(json.dumps(entry)))


def read_entry(value: Any) -> dict[str, Any] | None:
    """The entry a stored value holds; None for anything else (another format, damage)."""
    if not isinstance(value, str):
        return None  # absent, or not written by this format (format 1 rows read as bytes)
    try:
        entry = json.loads(value)
    except ValueError:
        return None
    if isinstance(entry, dict) and "output" in entry and isinstance(entry.get("usage"), dict):
        return entry
    return None


class ResultCache:
    """Step results by cache key. A damaged cache degrades to misses, never to wrong results.

    The folder (`<home>/cache`, mode 0700) is opened on first use. One that cannot be opened
    (damaged, or written by an older StepChain) is moved aside with a warning and an empty one
    takes its place; if that fails too, this cache stays empty and writes nothing.
    """

    def __init__(self, settings: Settings) -> None:
        self.path = settings.ensure_home() / "cache"
        self._cache: diskcache.Cache | None = None
        self._unusable = False
        self._read_warned = False

    # -- opening ----------------------------------------------------------------------------
    def _open(self) -> diskcache.Cache | None:
        if self._cache is None and not self._unusable:
            try:
                self._cache = self._connect()
            except _BROKEN as exc:
                self._cache = self._replace(exc)
        return self._cache

    def _connect(self) -> diskcache.Cache:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.chmod(0o700)
        return diskcache.Cache(str(self.path))

    def _replace(self, error: BaseException) -> diskcache.Cache | None:
        aside = self.path.with_name(f"cache.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{time.time_ns()}")
        try:
            self.path.rename(aside)
            cache = self._connect()
        except _BROKEN as again:
            log.warning(
                "cache at %s cannot be opened (%s; %s); running without a cache",
                self.path,
                _describe(error),
                _describe(again),
            )
            self._unusable = True
            return None
        log.warning(
            "cache at %s cannot be opened (%s): damaged, or from an older StepChain; "
            "moved it to %s (safe to delete) and started an empty one",
            self.path,
            _describe(error),
            aside,
        )
        return cache

    # -- reading ----------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        """The entry `{"output", "usage", "created_at"}` stored under `key`, or None."""
        cache = self._open()
        if cache is None:
            return None
        try:
            value = cache.get(key)
        except Exception as exc:  # a damaged row or file: a miss, never a traceback
            self._read_failed(key, exc)
            return None
        return read_entry(value)

    def lookup_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The entries found among `keys`, by key (missing and expired keys are left out)."""
        found: dict[str, dict[str, Any]] = {}
        for key in dict.fromkeys(keys):
            entry = self.get(key)
            if entry is not None:
                found[key] = entry
        return found

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def _read_failed(self, key: str, exc: BaseException) -> None:
        if not self._read_warned:  # once per cache: a damaged file fails every read alike
            self._read_warned = True
            log.warning("cache entry %s unreadable (%s); recomputing", key[:12], _describe(exc))
        else:
            log.debug("cache entry %s unreadable (%s)", key[:12], _describe(exc))

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, output: Any, usage: dict[str, int] | None, ttl: float | None) -> None:
        """Store one result (expiring after `ttl` seconds, None: never)."""
        self.set_many([(key, output, usage, ttl)])

    def set_many(self, entries: Iterable[Entry]) -> None:
        """Store several results in one transaction (one commit instead of one per result).

        A result that is not JSON is left out with a warning, not the whole batch; the last
        write of a key wins.
        """
        now = time.time()
        texts: dict[str, tuple[str, float | None]] = {}
        for key, output, usage, ttl in entries:
            try:
                texts[key] = (entry_text(output, usage, now), ttl)
            except (TypeError, ValueError) as exc:
                log.warning("could not write cache entry %s (not JSON: %s)", key[:12], exc)
        if not texts:
            return
        cache = self._open()
        if cache is None:
            return
        try:
            with cache.transact():
                for key, (text, ttl) in texts.items():
                    cache.set(key, text, expire=ttl)
        except _BROKEN as exc:
            log.warning("could not write %d cache entries (%s)", len(texts), _describe(exc))

    # -- the whole cache --------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        cache = self._usable()
        return {"path": str(self.path), "entries": len(cache), "bytes": cache.volume()}

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        return int(self._usable().clear())

    def _usable(self) -> diskcache.Cache:
        cache = self._open()
        if cache is None:
            raise StepChainError(
                f"the cache at {self.path} cannot be opened",
                "check the folder's permissions, or remove it (results are recomputed)",
            )
        return cache

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
