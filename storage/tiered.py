"""TieredStore: a LocalCache in front of any backend, behind the same Store contract.

A lookup asks the cache first and sends only the misses to the backend, de-duplicated and in
one batch call: a backend pays per call (a syscall, a network round trip to Aerospike), so one
call per micro-batch is what keeps the miss path cheap. Rows fetched are then offered to the
cache, which admits them only if they are popular enough. Each tier records its own metrics, so
the cache and backend numbers add up without a count taken twice.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

import numpy as np

from storage._arrays import as_ids
from storage._closing import ClosesOnExit
from storage.cache import LocalCache
from storage.store import Ids, Lookup, Store, TableSpec


class _Prefetches(Protocol):
    def prefetch(self, table: str, ids: Ids, /, *, budget_ms: float) -> Lookup: ...


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

    def _fetch(self, table: str, ids: Any, deadline_ms: float | None) -> Lookup:
        return self.backend.get_many(table, ids, deadline_ms=deadline_ms)

    def get_many(self, table: str, ids: Any, /, *, deadline_ms: float | None = None) -> Lookup:
        """Cache first, then one backend call for the misses, told the request's deadline
        (``deadline_ms``, Unix epoch ms) when the backend is one that can stop waiting."""
        if self.cache.capacity_bytes == 0:  # a cache turned off costs nothing
            return self._fetch(table, ids, deadline_ms)
        spec = self.table(table)
        ids = as_ids(table, ids)
        cached = self.cache.get(spec, ids)
        if ids.shape[0] == 0 or bool(cached.found.all()):
            return cached
        missing = np.flatnonzero(~cached.found)
        wanted, back = np.unique(ids[missing], return_inverse=True)
        fetched = self._fetch(table, wanted, deadline_ms)
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

    def warm(
        self,
        table: str,
        ids: Any,
        /,
        *,
        chunk: int = 4096,
        budget_ms: float = 250.0,
        pause_s: float = 0.05,
        give_up_after: int = 3,
    ) -> int:
        """Look ``ids`` up ``chunk`` at a time to fill the cache; returns the rows admitted.

        A cold worker's first burst asks the backend for tens of thousands of keys at once,
        which a loaded Aerospike answers with timeouts on nearly every record. Warming in
        chunks keeps each read small enough to succeed; a chunk that fails halves the next one
        and pauses, and ``give_up_after`` failures in a row stop the warm-up (the cache then
        fills from traffic). A backend that can prefetch is asked without counting degraded
        lookups or feeding its breaker: a warm-up is not an answer anyone waits for.
        """
        if chunk < 1 or give_up_after < 1:
            raise ValueError(
                f"need chunk >= 1 and give_up_after >= 1, got {chunk}, {give_up_after}"
            )
        spec = self.table(table)
        ids = as_ids(table, ids)
        prefetch = (
            cast(_Prefetches, self.backend).prefetch if hasattr(self.backend, "prefetch") else None
        )
        admitted, failures, lo = 0, 0, 0
        while lo < ids.shape[0] and self.cache.capacity_bytes > 0:
            part = ids[lo : lo + chunk]
            lo += part.shape[0]
            cached = self.cache.get(spec, part)  # feeds the admission sketch, as traffic would
            wanted = np.unique(part[~cached.found])
            if wanted.shape[0] == 0:
                continue
            if prefetch is not None:
                got = prefetch(table, wanted, budget_ms=budget_ms)
            else:
                got = self.backend.get_many(table, wanted)
            if got.found.any():
                admitted += self.cache.offer(spec, wanted[got.found], got.vectors[got.found])
            if got.degraded is None or not got.degraded.any():
                failures = 0
                continue
            failures += 1
            if failures >= give_up_after:
                break
            chunk = max(64, chunk // 2)
            time.sleep(pause_s)
        return admitted

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
