"""diskcache's rows, read and written directly: what `ResultCache` does in bulk and at start-up.

diskcache's own `get`/`set` go one key per statement, and opening a cache through it writes
every setting back (~6 ms). For the layout `ResultCache` creates (JSONDisk keys and values, no
statistics, an eviction policy that leaves rows alone on reads), reading and writing the rows
directly gives exactly what those calls would; `direct_layout` says when that holds.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

import diskcache

COMPRESS_LEVEL = 1  # diskcache's disk_compress_level for this cache (keys and values)


def direct_layout(cache: diskcache.Cache) -> bool:
    """Whether reading and writing rows directly gives what `Cache.get`/`Cache.set` would.

    True for the layout `ResultCache` creates: JSONDisk keys and values, no statistics, and an
    eviction policy that does not update rows on reads.
    """
    policy = diskcache.core.EVICTION_POLICY.get(cache.eviction_policy, {})
    return (
        type(cache.disk) is diskcache.JSONDisk
        and not cache.statistics
        and policy.get("get") is None
        and hasattr(cache, "_con")
    )


def connection_of(cache: diskcache.Cache) -> sqlite3.Connection:
    """diskcache's own connection (this thread's), so our statements join its transaction."""
    return cache._con


def key_column(key: str, disk: diskcache.JSONDisk) -> bytes:
    """The `key` column diskcache's JSONDisk stores for `key` (raw = 1)."""
    return zlib.compress(json.dumps(key).encode(), disk.compress_level)


class RowReader:
    """Reads rows of a cache that this process has not opened through diskcache.

    Opening with diskcache writes every setting back (a dozen commits, ~6 ms), which a run's
    first lookups would wait for; this reads the same rows with a plain connection. Only for
    the layout `direct_layout` accepts, checked from the cache's own Settings table.
    """

    def __init__(self, db: sqlite3.Connection, disk: diskcache.JSONDisk) -> None:
        self.db = db
        self.disk = disk

    @classmethod
    def open(cls, path: Path) -> RowReader | None:
        """A reader, or None when the layout is not the plain one (then use diskcache)."""
        db = sqlite3.connect(path / diskcache.core.DBNAME, isolation_level=None)
        try:
            settings = dict(db.execute("SELECT key, value FROM Settings").fetchall())
            policy = diskcache.core.EVICTION_POLICY.get(settings.get("eviction_policy"), {})
            if settings.get("statistics") or policy.get("get") is not None:
                db.close()
                return None
            disk = diskcache.JSONDisk(str(path), compress_level=COMPRESS_LEVEL)
            return cls(db, disk)
        except BaseException:
            db.close()
            raise


def stop_malloc_trimming() -> None:
    """Make zlib.compress cheap again for the rest of the process (glibc; harmless elsewhere).

    Every zlib.compress (diskcache compresses each key and value) allocates ~260 KB of deflate
    state. With glibc's initial trim threshold (128 KB), freeing it gives the pages back to the OS
    and the next call faults them in again: ~100 us a call instead of ~8. Freeing one buffer
    bigger than the mmap threshold makes glibc raise both thresholds (its documented dynamic
    behaviour, what any process that once freed a big buffer has), which ends that.
    """
    global _MALLOC_TUNED
    if not _MALLOC_TUNED:
        _MALLOC_TUNED = True
        buffer = bytes(1 << 21)  # calloc'd fresh from mmap: no page touched (bytearray: ~2 ms)
        del buffer


_MALLOC_TUNED = False
