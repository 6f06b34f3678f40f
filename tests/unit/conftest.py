"""Shared fixtures for unit tests: small tables and a model, no processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.model import ModelShape, RankingModel
from storage import EmbeddedStore, LocalCache, TableSpec, TieredStore

DIM = 8
CTX = 4
USERS = 50
ITEMS = 500


@pytest.fixture
def tables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "users": rng.standard_normal((USERS, DIM)).astype(np.float32),
        "items": rng.standard_normal((ITEMS, DIM)).astype(np.float32),
    }


@pytest.fixture
def store(tmp_path: Path, tables: dict[str, np.ndarray]) -> TieredStore:
    backend = EmbeddedStore(tmp_path / "store")
    for name, rows in tables.items():
        backend.create_table(TableSpec(name=name, dim=DIM))
        backend.put_many(name, np.arange(len(rows), dtype=np.int64), rows)
    s = TieredStore(backend, LocalCache(capacity_bytes=64 * DIM * 4))
    yield s
    s.close()


@pytest.fixture
def model() -> RankingModel:
    return RankingModel.synthetic(ModelShape(user_dim=DIM, context_dim=CTX, item_dim=DIM), seed=11)
