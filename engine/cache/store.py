"""The content-addressed result cache: diskcache with JSON serialisation, never pickle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable
from typing import Any

import diskcache
from stepchain.cache.rows import (
    COMPRESS_LEVEL,
    RowReader,
    connection_of,
    direct_layout,
    key_column,
    stop_malloc_trimming,
)
from stepchain.settings import LOGGER_NAME, Settings

CACHE_FORMAT = 1  # bump when what goes into a key or an entry changes meaning
log = logging.getLogger(LOGGER_NAME)
_BROKEN = (sqlite3.DatabaseError, OSError, ValueError, zlib.error, KeyError, TypeError)


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)  # one encoder: json.dumps with options builds a new one per call


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def cache_key(kind: str, request: Any) -> str:
    """SHA-256 of canonical JSON of everything that determines a step's result."""
    payload = canonical_json({"format": CACHE_FORMAT, "kind": kind, "request": request})
    return hashlib.sha256(payload.encode()).hexdigest()


_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit
_MAX_MISSED = 100_000  # remembered key columns of missed lookups (~100 bytes each)


class ResultCache:
    """Step results by cache key. A damaged cache degrades to misses, never to wrong results."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.ensure_home() / "cache"
        self._cache: diskcache.Cache | None = None
        # the key column of keys looked up and missed, kept for the write that usually follows
        # (compressing a key is most of what a lookup costs)
        self._missed: dict[str, bytes] = {}
        self._opening: threading.Thread | None = None
        self._reader: RowReader | bool | None = None  # False: layout not plain, use diskcache
        # True from the start of a run that found no cache file until this cache writes: nothing
        # can be found, so lookups skip the wait for the file being created. (Another process
        # creating it at the same moment would only cost a miss, never a wrong result.)
        self._known_empty = False
        stop_malloc_trimming()

    def start_run(self) -> None:
        """Note whether the cache exists as a run starts: a missing one can hold nothing, so
        lookups skip it (not even creating it) until this cache writes. An existing one is
        opened by its first lookup."""
        self._known_empty = not (self.path / diskcache.core.DBNAME).exists()

    def open_in_background(self) -> None:
        """Open (or create) the cache for its writes in a thread, so the first write finds it
        ready (lookups do not need it: they read with a plain connection, `cache_rows.RowReader`).

        A run calls this once its steps' requests are out and it is idle: a thread doing
        Python work while the run's own thread is busy delays that thread by up to the GIL
        switch interval each time it wants the GIL back. The first use waits for the thread;
        a failure there is left for `_open` to handle.
        """
        if not self.to_open:
            return

        def connect() -> None:
            with contextlib.suppress(*_BROKEN):
                cache = self._connect()
                cache.close()  # the thread's own connection; each thread opens its own
                self._cache = cache

        self._opening = threading.Thread(target=connect, name="stepchain-cache", daemon=True)
        self._opening.start()

    @property
    def to_open(self) -> bool:
        """Nothing has opened the cache through diskcache yet (lookups need not)."""
        return self._cache is None and self._opening is None

    def _open(self) -> diskcache.Cache | None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None
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
        return diskcache.Cache(
            str(self.path), disk=diskcache.JSONDisk, disk_compress_level=COMPRESS_LEVEL
        )

    def get(self, key: str) -> dict[str, Any] | None:
        return self.lookup_many([key]).get(key)

    def lookup_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The valid entries among `keys` (as diskcache's `get` would return them), in one
        query per 500 keys; per key through diskcache when the layout is not the plain one."""
        found: dict[str, dict[str, Any]] = {}
        if not keys or self._known_empty:
            return found
        try:
            source = self._read_source()
            if source is None:
                return self._get_each(keys)
            db, disk = source
            by_db_key = {key_column(key, disk): key for key in dict.fromkeys(keys)}
            wanted = list(by_db_key)
            now = time.time()
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                rows = db.execute(
                    "SELECT key, mode, filename, value FROM Cache WHERE raw = 1 AND key IN "
                    f"({','.join('?' * len(chunk))}) AND (expire_time IS NULL OR expire_time > ?)",
                    (*chunk, now),
                ).fetchall()
                for db_key, mode, filename, db_value in rows:
                    key = by_db_key[bytes(db_key)]
                    try:
                        entry = disk.fetch(mode, filename, db_value, False)
                    except _BROKEN as exc:
                        log.warning("cache entry %s unreadable (%s); recomputing", key[:12], exc)
                        continue
                    if isinstance(entry, dict) and "output" in entry:
                        found[key] = entry
            if len(self._missed) > _MAX_MISSED:
                self._missed.clear()
            self._missed.update((k, b) for b, k in by_db_key.items() if k not in found)
        except _BROKEN as exc:
            log.warning("cache unreadable (%s); recomputing", exc)
        return found

    def _read_source(self) -> tuple[sqlite3.Connection, diskcache.JSONDisk] | None:
        """Where lookups read rows: diskcache's connection once it is open, else a plain one."""
        if self._cache is not None or self._opening is not None or self._reader is False:
            cache = self._open()
            return (connection_of(cache), cache.disk) if direct_layout(cache) else None
        if self._reader is None:
            if not (self.path / diskcache.core.DBNAME).exists():
                return None  # nothing to read; diskcache creates it (and finds nothing)
            self._reader = RowReader.open(self.path) or False
            if self._reader is False:
                return self._read_source()
        return self._reader.db, self._reader.disk

    def _get_each(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for key in keys:
            try:
                entry = self._open().get(key)
            except _BROKEN as exc:
                log.warning("cache entry %s unreadable (%s); recomputing", key[:12], exc)
                continue
            if isinstance(entry, dict) and "output" in entry:
                found[key] = entry
        return found

    def set(self, key: str, output: Any, usage: dict[str, int] | None, ttl: float | None) -> None:
        entry = {"output": output, "usage": usage or {}, "created_at": time.time()}
        self._known_empty = False
        try:
            self._open().set(key, entry, expire=ttl)
        except _BROKEN as exc:
            log.warning("could not write cache entry %s (%s)", key[:12], exc)

    def set_many(self, entries: list[tuple[str, Any, dict[str, int] | None, float | None]]) -> None:
        """Store several results in one transaction (one commit instead of one per result).

        A result that is not JSON is left out (with a warning), not the whole batch.

        New small entries are inserted with one statement for all (the rows `Cache.set` would
        write, byte for byte); a key already present or a value big enough for a file goes
        through `Cache.set`. Expired entries are culled once per batch instead of once per entry.
        """
        if not entries:
            return
        self._known_empty = False
        try:
            cache = self._open()
            now = time.time()
            latest = {key: (output, usage, ttl) for key, output, usage, ttl in entries}
            with cache.transact():
                if not direct_layout(cache):
                    self._set_each(cache, latest, now)
                    return
                disk = cache.disk
                rows, slow = [], {}
                missed = self._missed
                db_keys = {key: missed.pop(key, None) or key_column(key, disk) for key in latest}
                present = self._present(cache, list(db_keys.values()))
                for key, (output, usage, ttl) in latest.items():
                    entry = {"output": output, "usage": usage or {}, "created_at": now}
                    db_key = db_keys[key]
                    try:
                        text = json.dumps(entry)
                    except (TypeError, ValueError) as exc:  # not JSON: this entry only
                        log.warning("could not write cache entry %s (%s)", key[:12], exc)
                        continue
                    data = zlib.compress(text.encode(), disk.compress_level)
                    if db_key in present or len(data) >= disk.min_file_size:
                        slow[key] = (output, usage, ttl)
                        continue
                    expire = None if ttl is None else now + ttl
                    rows.append((db_key, now, expire, now, sqlite3.Binary(data)))
                connection_of(cache).executemany(
                    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time,"
                    " access_count, tag, size, mode, filename, value)"
                    f" VALUES (?, 1, ?, ?, ?, 0, NULL, 0, {diskcache.core.MODE_RAW}, NULL, ?)",
                    rows,
                )
                self._set_each(cache, slow, now)
            cache.cull()
        except _BROKEN as exc:
            log.warning("could not write %d cache entries (%s)", len(entries), exc)

    @staticmethod
    def _set_each(cache: diskcache.Cache, entries: dict[str, tuple], now: float) -> None:
        for key, (output, usage, ttl) in entries.items():
            entry = {"output": output, "usage": usage or {}, "created_at": now}
            try:
                cache.set(key, entry, expire=ttl)
            except (TypeError, ValueError) as exc:  # not JSON (raised before any write)
                log.warning("could not write cache entry %s (%s)", key[:12], exc)

    @staticmethod
    def _present(cache: diskcache.Cache, db_keys: list[bytes]) -> set[bytes]:
        present: set[bytes] = set()
        for start in range(0, len(db_keys), _CHUNK):
            chunk = db_keys[start : start + _CHUNK]
            rows = (
                connection_of(cache)
                .execute(
                    f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
                .fetchall()
            )
            present.update(bytes(row[0]) for row in rows)
        return present

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def info(self) -> dict[str, Any]:
        cache = self._open()
        return {"path": str(self.path), "entries": len(cache), "bytes": cache.volume()}

    def clear(self) -> int:
        return self._open().clear()

    def close(self) -> None:
        self._missed.clear()
        if self._reader:
            self._reader.db.close()
        self._reader = None
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """`lookup_many` for a caller that computes keys lazily (`stepchain plan`): `keys` is
        iterated only when the cache holds anything, so a first plan computes no key at all.
        """
        try:
            cache = self._open()
            if (
                direct_layout(cache)
                and not connection_of(cache).execute("SELECT 1 FROM Cache LIMIT 1").fetchall()
            ):
                return {}  # an empty cache holds none of them
        except _BROKEN as exc:
            log.warning("cache unreadable (%s); looking entries up one by one", exc)
        return self.lookup_many(list(keys))
