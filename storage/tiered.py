"""TieredStore: a LocalCache in front of any backend, behind the same Store contract.

A lookup asks the cache first and sends only the misses to the backend, de-duplicated and in
one batch call: a backend pays per call (a syscall, a network round trip to Aerospike), so one
call per micro-batch is what keeps the miss path cheap. Rows fetched are then offered to the
cache, which admits them only if they are popular enough. Each tier records its own metrics, so
the cache and backend numbers add up without a count taken twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage._arrays import as_ids
from storage._closing import ClosesOnExit
from storage.cache import LocalCache
from storage.store import Lookup, Store, TableSpec


class TieredStore(ClosesOnExit):
    """Reads through the cache, writes through to the backend (and refreshes cached rows).

    The tiered store owns both tiers: ``close`` closes the backend and empties the cache.
    Table specs are read from the backend once per table and kept.
    """

    def __init__(self, backend: Store, cache: LocalCache, /) -> None:
        self.backend = backend
        self.cache = cache
        self._specs: dict[str, TableSpec] = {}

    def table(self, name: str, /) -> TableSpec:
        spec = self._specs.get(name)
        if spec is None:
            spec = self.backend.table(name)
            self._specs[name] = spec
        return spec

    def get_many(self, table: str, ids: Any, /) -> Lookup:
        if self.cache.capacity_bytes == 0:  # a cache turned off costs nothing
            return self.backend.get_many(table, ids)
        spec = self.table(table)
        ids = as_ids(table, ids)
        cached = self.cache.get(spec, ids)
        if ids.shape[0] == 0 or bool(cached.found.all()):
            return cached
        missing = np.flatnonzero(~cached.found)
        wanted, back = np.unique(ids[missing], return_inverse=True)
        fetched = self.backend.get_many(table, wanted)
        vectors, found = cached.vectors, cached.found
        vectors[missing] = fetched.vectors[back]
        found[missing] = fetched.found[back]
        if fetched.found.any():
            self.cache.offer(spec, wanted[fetched.found], fetched.vectors[fetched.found])
        degraded = None
        if fetched.degraded is not None:  # the backend could not be asked: hits still count
            degraded = np.zeros(ids.shape[0], dtype=np.bool_)
            degraded[missing] = fetched.degraded[back]
        return Lookup(vectors, found, degraded)

    def put_many(self, table: str, ids: Any, vectors: Any, /) -> None:
        """Write to the backend first: if that fails, the cache still holds the old rows."""
        spec = self.table(table)
        self.backend.put_many(table, ids, vectors)
        self.cache.update(spec, ids, vectors)

    def hit_ratio(self, table: str | None = None, /) -> float:
        """Share of looked-up ids the cache answered, for one table or all; 0.0 before any.

        Still answers after ``close``, for a run's summary.
        """
        names = [table] if table is not None else list(self._specs)
        stats = [self.cache.stats(name) for name in names]
        looked = sum(s.hits + s.misses for s in stats)
        return sum(s.hits for s in stats) / looked if looked else 0.0

    def close(self) -> None:
        self.cache.clear()
        self.backend.close()
