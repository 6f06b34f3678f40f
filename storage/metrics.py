"""Every metric the storage package exports; dashboards read exactly these names.

Labels are bounded sets: ``table`` (a handful of embedding tables) and ``tier`` (``cache``,
``embedded``, ``aerospike``). Each tier records its own lookups, so a tiered store's numbers add
up without double counting; only a leaf backend (the last tier) counts fallbacks.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

LOOKUP_BUCKETS: Final = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip

HITS: Final = Counter(
    "jizhi_store_hits_total",
    "Ids a store tier answered with a row.",
    ["table", "tier"],
)
MISSES: Final = Counter(
    "jizhi_store_misses_total",
    "Ids a store tier had no (live) row for.",
    ["table", "tier"],
)
LOOKUP: Final = Histogram(
    "jizhi_store_lookup_seconds",
    "Time of one batch lookup in a store tier.",
    ["table", "tier"],
    buckets=LOOKUP_BUCKETS,
)
BYTES: Final = Gauge(
    "jizhi_store_bytes",
    "Bytes of rows a store tier holds (cache: live entries; embedded: rows on disk).",
    ["table", "tier"],
)
FALLBACK: Final = Counter(
    "jizhi_store_fallback_total",
    "Ids that had no row in any tier and were answered with the fallback (zeros).",
    ["table"],
)


class TierMetrics:
    """The children of every metric for one (table, tier), bound once.

    Binding labels costs a dict lookup under a lock; doing it per table at first use keeps the
    per-batch cost to a few increments.
    """

    __slots__ = ("bytes", "degraded", "fallback", "hits", "lookup", "misses")

    def __init__(self, table: str, tier: str) -> None:
        self.hits = HITS.labels(table=table, tier=tier)
        self.misses = MISSES.labels(table=table, tier=tier)
        self.lookup = LOOKUP.labels(table=table, tier=tier)
        self.bytes = BYTES.labels(table=table, tier=tier)
        self.fallback = FALLBACK.labels(table=table)
        # Bound here so every table's series exists at 0 from the start: a dashboard then shows
        # "no degraded lookups" rather than no data, and rate() sees the first increment.
        self.degraded = DEGRADED.labels(table=table)

    def record(self, found: int, total: int, seconds: float) -> None:
        self.hits.inc(found)
        self.misses.inc(total - found)
        self.lookup.observe(seconds)


DEGRADED: Final = Counter(
    "jizhi_store_degraded_total",
    "Ids answered with the fallback (zeros) because the backend could not be asked in time "
    "(unreachable, slow, or its circuit breaker open), as opposed to ids it has no row for.",
    ["table"],
)
BACKEND_UP: Final = Gauge(
    "jizhi_store_backend_up",
    "1 while the backend answers (circuit breaker closed), 0 while lookups are degraded.",
    ["backend"],
)
BACKEND_ERRORS: Final = Counter(
    "jizhi_store_backend_errors_total",
    "Failed backend calls by error class (what a retry or the breaker then has to absorb).",
    ["backend", "error"],
)
