"""The composition root: settings in, wired stages and stores out.

Only this module knows which concrete store a deployment uses; stages get their store and model
through the `StageContext` their factories receive, never by looking them up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from jizhi.config import ConfigError, PipelineSettings, Settings, pipeline_of
from stages.admission import Admission
from stages.context import StageContext
from stages.model import RankingModel
from stages.runtime import BatchPolicy
from storage import EmbeddedStore, LocalCache, TieredStore
from storage.aerospike_store import AerospikeStore


def open_store(settings: Settings, path: Path | None = None) -> TieredStore:
    """The configured backend, read-only (stages only read; many workers share one store), behind
    a local cache of ``store.cache_bytes``."""
    cache = LocalCache(capacity_bytes=settings.store.cache_bytes)
    if settings.store.backend == "aerospike":
        try:
            settings.store.aerospike.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        return TieredStore(AerospikeStore(settings.store.aerospike), cache)
    root = path if path is not None else Path(settings.store.path)
    if not str(root):
        raise ConfigError("store.path: the embedded store needs a directory")
    return TieredStore(EmbeddedStore(root, mode="r"), cache)


T = TypeVar("T")


class Once(Generic[T]):
    """A resource opened on first use and then shared: a worker running only ``rank`` never
    opens the store, and every stage of a process reads through one local cache."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def __call__(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    @property
    def opened(self) -> T | None:
        return self._value


def stage_context(
    settings: Settings,
    pipeline: PipelineSettings,
    *,
    store: Callable[[], TieredStore] | None = None,
    model: Callable[[], RankingModel] | None = None,
    admission: Admission | None = None,
    clock: Callable[[], float] = time.time,
) -> StageContext:
    """What the pipeline's stages are built from: its settings and the shared resources."""
    p = pipeline
    extra: dict[str, Any] = {}
    if store is not None:
        extra["store"] = store
    if model is not None:
        extra["model"] = model
    return StageContext(
        pipeline=p.name,
        default_timeout_ms=p.default_timeout_ms,
        min_budget_ms=p.min_budget_ms,
        admission_rate=p.admission_rate,
        context_dim=p.context_dim,
        user_table=settings.store.user_table,
        item_table=settings.store.item_table,
        tower_cache_bytes=settings.store.tower_cache_bytes,
        tower_cache_ttl_s=settings.store.tower_cache_ttl_s,
        admission=admission
        or Admission(rate=p.admission_rate, min_budget_ms=p.min_budget_ms, clock=clock),
        clock=clock,
        **extra,
    )


def batch_policies(pipeline: PipelineSettings) -> dict[str, BatchPolicy]:
    """One micro-batch policy for every stage of the pipeline (a custom stage included)."""
    policy = BatchPolicy(
        max_size=pipeline.batch_size,
        max_wait_ms=pipeline.batch_wait_ms,
        max_candidates=pipeline.batch_candidates,
    )
    return dict.fromkeys(pipeline_of(pipeline).names, policy)


def cache_hit_ratio(store: TieredStore, tables: tuple[str, ...]) -> float:
    """Share of lookups in ``tables`` that the local cache answered."""
    hits = misses = 0
    for name in tables:
        s = store.cache.stats(name)
        hits += s.hits
        misses += s.misses
    return hits / (hits + misses) if hits + misses else 0.0
