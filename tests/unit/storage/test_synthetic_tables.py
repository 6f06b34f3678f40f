"""Synthetic tables are deterministic per seed; the Zipf sampler is bounded, skewed, scattered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage import EmbeddedStore, LocalCache, TableSpec, TieredStore, generate_table, zipf_ids
from storage.errors import SchemaMismatchError
from storage.synthetic import ZipfSampler, synthetic_rows


def test_rows_depend_on_seed_and_id_only() -> None:
    spec = TableSpec("items", 16)
    whole = synthetic_rows(spec, 7, 0, 10_000)
    pieces = np.concatenate(
        [synthetic_rows(spec, 7, a, min(a + 333, 10_000)) for a in range(0, 10_000, 333)]
    )
    np.testing.assert_array_equal(whole, pieces)
    assert not np.array_equal(whole, synthetic_rows(spec, 8, 0, 10_000))
    norms = np.linalg.norm(whole, axis=1)
    assert 0.8 < norms.mean() < 1.2  # scaled by 1/sqrt(dim): unit-sized rows


def test_generate_table_in_chunks(tmp_path: Path) -> None:
    spec = TableSpec("items", 8, "float16")
    with EmbeddedStore(tmp_path / "a") as a, EmbeddedStore(tmp_path / "b") as b:
        generate_table(a, spec, 5000, seed=3, chunk=4096)
        generate_table(b, spec, 5000, seed=3, chunk=777)
        ids = np.arange(5000)
        va, vb = a.get_many("items", ids), b.get_many("items", ids)
        assert va.found.all() and vb.found.all()
        np.testing.assert_array_equal(va.vectors, vb.vectors)
        np.testing.assert_array_equal(va.vectors, synthetic_rows(spec, 3, 0, 5000))
        generate_table(a, spec, 10, seed=3)  # an existing table of the same shape is fine
        with pytest.raises(SchemaMismatchError):
            generate_table(a, TableSpec("items", 9), 10, seed=3)


def test_generate_through_a_tiered_store(tmp_path: Path) -> None:
    backend = EmbeddedStore(tmp_path / "db")
    spec = TableSpec("users", 4)
    backend.create_table(spec)
    with TieredStore(backend, LocalCache(capacity_bytes=1 << 16)) as store:
        generate_table(store, spec, 300, seed=1, chunk=64)
        assert store.get_many("users", np.arange(300)).found.all()


def test_zipf_ids_are_bounded_deterministic_and_skewed() -> None:
    ids = zipf_ids(np.random.default_rng(1), 10_000, 200_000, 1.0)
    assert ids.dtype == np.int64 and ids.shape == (200_000,)
    assert ids.min() >= 0 and ids.max() < 10_000
    np.testing.assert_array_equal(ids, zipf_ids(np.random.default_rng(1), 10_000, 200_000, 1.0))
    counts = np.sort(np.bincount(ids, minlength=10_000))[::-1]
    ideal = np.cumsum(ZipfSampler(10_000, 1.0).probabilities())
    top = counts[:100].sum() / ids.shape[0]
    assert abs(top - ideal[99]) < 0.01  # the top 1% carry what the law says (about 53%)
    popular = np.argsort(np.bincount(ids, minlength=10_000))[::-1][:10]
    assert popular.max() > 100  # scattered over the id space, not the first ids


def test_zipf_exponent_zero_is_uniform_and_one_item_is_fine() -> None:
    ids = zipf_ids(np.random.default_rng(2), 100, 100_000, 0.0)
    counts = np.bincount(ids, minlength=100)
    assert counts.min() > 800 and counts.max() < 1200
    assert (zipf_ids(np.random.default_rng(2), 1, 10, 1.2) == 0).all()
    with pytest.raises(ValueError, match="n_items"):
        ZipfSampler(0, 1.0)
