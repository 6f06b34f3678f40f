"""Each tier counts its own hits, misses, time and bytes; only the leaf counts fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from storage import EmbeddedStore, LocalCache, TableSpec, TieredStore


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tier_metrics_add_up(tmp_path: Path) -> None:
    table = "metrics_items"  # a name no other test uses: the registry is process-wide
    backend = EmbeddedStore(tmp_path / "db")
    backend.create_table(TableSpec(table, 2))
    backend.put_many(table, np.arange(10), np.ones((10, 2), np.float32))
    store = TieredStore(backend, LocalCache(capacity_bytes=1 << 16))
    store.get_many(table, np.array([1, 2, 3, 50]))  # cache: 4 misses; embedded: 3 hits, 1 miss
    store.get_many(table, np.array([1, 2, 50, 50]))  # cache: 2 hits; embedded: 1 id (deduped)

    def tier(name: str, t: str) -> float:
        return value(name, table=table, tier=t)

    assert tier("jizhi_store_hits_total", "cache") == 2
    assert tier("jizhi_store_misses_total", "cache") == 6
    assert tier("jizhi_store_hits_total", "embedded") == 3
    assert tier("jizhi_store_misses_total", "embedded") == 2
    assert value("jizhi_store_fallback_total", table=table) == 2
    assert tier("jizhi_store_lookup_seconds_count", "cache") == 2
    assert tier("jizhi_store_lookup_seconds_count", "embedded") == 2
    assert tier("jizhi_store_bytes", "embedded") == 10 * (8 + 8)
    assert tier("jizhi_store_bytes", "cache") == 3 * (8 + 8)  # 3 rows of 8 bytes + 8-byte keys
    store.close()


def test_hit_ratio_survives_close(tmp_path: Path) -> None:
    backend = EmbeddedStore(tmp_path / "db")
    backend.create_table(TableSpec("ratio_items", 2))
    backend.put_many("ratio_items", np.arange(4), np.ones((4, 2), np.float32))
    store = TieredStore(backend, LocalCache(capacity_bytes=1 << 16))
    assert store.hit_ratio() == 0.0
    store.get_many("ratio_items", np.arange(4))
    store.get_many("ratio_items", np.arange(4))
    store.close()
    assert store.hit_ratio() == 0.5
    assert store.hit_ratio("ratio_items") == 0.5
