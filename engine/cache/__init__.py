"""The result cache: content-addressed step results in diskcache, as JSON text (never pickle).

`cache_key` names a result, `ResultCache` stores it, `PendingWrites` batches a run's writes.
"""

from stepchain.cache.keys import CACHE_FORMAT, cache_key, canonical_json
from stepchain.cache.pending import PendingWrites
from stepchain.cache.store import ResultCache

__all__ = ["CACHE_FORMAT", "PendingWrites", "ResultCache", "cache_key", "canonical_json"]
