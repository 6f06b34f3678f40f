"""The composition root: settings in, wired stages and stores out.

Only this module knows which concrete store and stages a deployment uses; stages get their store
and model through their constructors, never by looking them up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jizhi.config import STAGE_ORDER, ConfigError, Settings
from stages.admission import Admission
from stages.builtin import Embed, Features, Ingest, Rank, Score
from stages.model import RankingModel
from stages.runtime import BatchPolicy
from stages.stage import Stage
from storage import EmbeddedStore, LocalCache, ResultCache, TieredStore
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


def build_stages(
    settings: Settings,
    names: tuple[str, ...] | list[str],
    *,
    store: TieredStore | None,
    model: RankingModel | None,
    admission: Admission | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Stage[Any]]:
    """The named stages, in pipeline order, wired to their dependencies."""
    unknown = [n for n in names if n not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {list(STAGE_ORDER)}")
    order = [STAGE_ORDER.index(n) for n in names]
    if order != sorted(order) or len(set(order)) != len(order):
        raise ConfigError(f"stages: {list(names)} are not in pipeline order {list(STAGE_ORDER)}")
    p = settings.pipeline
    built: list[Stage[Any]] = []
    for name in names:
        if name == "ingest":
            built.append(
                Ingest(
                    default_timeout_ms=p.default_timeout_ms,
                    admission=admission
                    or Admission(rate=p.admission_rate, min_budget_ms=p.min_budget_ms, clock=clock),
                    clock=clock,
                )
            )
        elif name in ("features", "embed"):
            if store is None:
                raise ConfigError(f"stage {name} needs an embedding store")
            if name == "features":
                built.append(
                    Features(store, table=settings.store.user_table, context_dim=p.context_dim)
                )
            else:
                built.append(Embed(store, table=settings.store.item_table))
        elif name == "score":
            if model is None:
                raise ConfigError("stage score needs a model (model.path)")
            towers = (
                ResultCache(
                    settings.store.tower_cache_bytes,
                    dim=model.shape.tower_dim,
                    ttl=settings.store.tower_cache_ttl_s,
                )
                if settings.store.tower_cache_bytes
                else None
            )
            built.append(Score(model, towers=towers))
        else:
            built.append(Rank())
    return built


def batch_policies(settings: Settings) -> dict[str, BatchPolicy]:
    p = settings.pipeline
    policy = BatchPolicy(max_size=p.batch_size, max_wait_ms=p.batch_wait_ms)
    return dict.fromkeys(STAGE_ORDER, policy)


def cache_hit_ratio(store: TieredStore, tables: tuple[str, ...]) -> float:
    """Share of lookups in ``tables`` that the local cache answered."""
    hits = misses = 0
    for name in tables:
        s = store.cache.stats(name)
        hits += s.hits
        misses += s.misses
    return hits / (hits + misses) if hits + misses else 0.0
