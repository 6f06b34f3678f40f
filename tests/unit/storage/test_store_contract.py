"""One contract suite for every Store backend: what a stage may rely on, whatever the backend.

Each backend is described by how to open it on a directory, so the same tests also cover
reopening from disk. Tiered stores get a small cache so that evictions happen during the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import EmbeddedStore, LocalCache, Store, TableSpec, TieredStore
from storage.errors import (
    InvalidIdsError,
    SchemaMismatchError,
    StorageError,
    StoreClosedError,
    UnknownTableError,
)

Opener = Callable[[Path], Store]
SPEC = TableSpec("items", 4)


def _embedded(path: Path) -> Store:
    return EmbeddedStore(path)


def _tiered(path: Path) -> Store:
    return TieredStore(EmbeddedStore(path), LocalCache(capacity_bytes=4096))


def _tiered_roomy(path: Path) -> Store:
    return TieredStore(EmbeddedStore(path), LocalCache(capacity_bytes=1 << 20, ttl=60.0))


def _tiered_off(path: Path) -> Store:
    return TieredStore(EmbeddedStore(path), LocalCache(capacity_bytes=0))


OPENERS = {
    "embedded": _embedded,
    "tiered": _tiered,
    "tiered-ttl": _tiered_roomy,
    "tiered-off": _tiered_off,
}


def _create(store: Store, spec: TableSpec) -> None:
    backend = store.backend if isinstance(store, TieredStore) else store
    assert isinstance(backend, EmbeddedStore)
    backend.create_table(spec, exist_ok=True)


@pytest.fixture(params=sorted(OPENERS))
def opener(request: pytest.FixtureRequest) -> Opener:
    return OPENERS[request.param]


@pytest.fixture
def store(opener: Opener, tmp_path: Path) -> Iterator[Store]:
    s = opener(tmp_path / "db")
    _create(s, SPEC)
    yield s
    s.close()


def rows(ids: np.ndarray, dim: int = SPEC.dim, salt: float = 0.0) -> np.ndarray:
    """Distinct, recognizable rows: row of id i is (i, i+0.25, ...) plus a salt."""
    out: np.ndarray = (ids[:, None] + np.arange(dim) * 0.25 + salt).astype(np.float32)
    return out


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)
    assert store.table("items") == SPEC


def test_round_trip_in_request_order(store: Store) -> None:
    ids = np.array([7, 3, 1 << 40, 0, 12], dtype=np.int64)
    store.put_many("items", ids, rows(ids))
    query = np.array([12, 0, 1 << 40, 3, 7], dtype=np.int64)
    for _ in range(3):  # the second and third rounds come from the cache when there is one
        got = store.get_many("items", query)
        assert got.vectors.dtype == np.float32
        assert got.found.all()
        np.testing.assert_array_equal(got.vectors, rows(query))


def test_missing_ids_get_zeros_and_found_false(store: Store) -> None:
    ids = np.arange(0, 20, 2, dtype=np.int64)
    store.put_many("items", ids, rows(ids))
    query = np.array([1, 2, 3, 4, 10**12], dtype=np.int64)
    got = store.get_many("items", query)
    np.testing.assert_array_equal(got.found, [False, True, False, True, False])
    np.testing.assert_array_equal(got.vectors[~got.found], 0)
    np.testing.assert_array_equal(got.vectors[got.found], rows(np.array([2, 4])))


def test_empty_table_and_empty_batch(store: Store) -> None:
    got = store.get_many("items", np.array([1, 2], dtype=np.int64))
    assert got.vectors.shape == (2, 4) and not got.found.any()
    empty = store.get_many("items", np.empty(0, dtype=np.int64))
    assert empty.vectors.shape == (0, 4) and empty.found.shape == (0,)
    store.put_many("items", np.empty(0, dtype=np.int64), np.empty((0, 4), dtype=np.float32))


def test_duplicates_in_a_get_batch(store: Store) -> None:
    ids = np.array([5, 6], dtype=np.int64)
    store.put_many("items", ids, rows(ids))
    query = np.array([5, 5, 9, 6, 5, 9], dtype=np.int64)
    for _ in range(2):
        got = store.get_many("items", query)
        np.testing.assert_array_equal(got.found, [True, True, False, True, True, False])
        np.testing.assert_array_equal(got.vectors[got.found], rows(query[got.found]))


def test_duplicates_in_a_put_batch_last_wins(store: Store) -> None:
    ids = np.array([1, 2, 1, 1], dtype=np.int64)
    vectors = np.stack([np.full(4, v, dtype=np.float32) for v in (10, 20, 30, 40)])
    store.put_many("items", ids, vectors)
    got = store.get_many("items", np.array([1, 2], dtype=np.int64))
    np.testing.assert_array_equal(got.vectors[:, 0], [40, 20])


def test_update_in_place_is_seen_through_the_cache(store: Store) -> None:
    ids = np.arange(50, dtype=np.int64)
    store.put_many("items", ids, rows(ids))
    store.get_many("items", ids)  # warm the cache, if any
    store.get_many("items", ids)
    some = np.array([3, 49, 17], dtype=np.int64)
    store.put_many("items", some, rows(some, salt=1000.0))
    got = store.get_many("items", ids)
    expected = rows(ids)
    expected[some] = rows(some, salt=1000.0)
    np.testing.assert_array_equal(got.vectors, expected)
    if isinstance(store, TieredStore):
        assert isinstance(store.backend, EmbeddedStore)
        assert store.backend.count("items") == 50


def test_reopen_from_disk(opener: Opener, tmp_path: Path) -> None:
    path = tmp_path / "db"
    s = opener(path)
    _create(s, SPEC)
    _create(s, TableSpec("users", 2, "float16"))
    ids = np.array([9, 1, 4], dtype=np.int64)
    s.put_many("items", ids, rows(ids))
    s.put_many("items", ids[:1], rows(ids[:1], salt=5.0))
    s.put_many("users", ids, rows(ids, dim=2))
    s.close()
    s = opener(path)
    try:
        assert s.table("users") == TableSpec("users", 2, "float16")
        got = s.get_many("items", np.array([1, 4, 9, 2], dtype=np.int64))
        np.testing.assert_array_equal(got.found, [True, True, True, False])
        np.testing.assert_array_equal(got.vectors[2], rows(ids[:1], salt=5.0)[0])
        users = s.get_many("users", ids)
        assert users.vectors.dtype == np.float16
        np.testing.assert_array_equal(users.vectors, rows(ids, dim=2).astype(np.float16))
    finally:
        s.close()


def test_float64_input_is_cast_to_the_table_dtype(store: Store) -> None:
    ids = np.array([1], dtype=np.int64)
    store.put_many("items", ids, np.full((1, 4), 0.5))
    got = store.get_many("items", ids)
    assert got.vectors.dtype == np.float32
    np.testing.assert_array_equal(got.vectors, 0.5)


@pytest.mark.parametrize(
    "vectors",
    [np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32), np.zeros((2, 4), np.int32)],
    ids=["wrong-dim", "wrong-count", "int-dtype"],
)
def test_vectors_must_fit_the_table(store: Store, vectors: np.ndarray) -> None:
    with pytest.raises(SchemaMismatchError, match="'items'"):
        store.put_many("items", np.array([1, 2], dtype=np.int64), vectors)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([1, -3]), r"ids\[1\] = -3"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([1.5]), "integers"),
        (np.array([2**63], dtype=np.uint64), "int64"),
    ],
)
def test_ids_are_checked(store: Store, ids: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidIdsError, match=message):
        store.get_many("items", ids)
    with pytest.raises(InvalidIdsError, match=message):
        store.put_many("items", ids, np.zeros((ids.shape[0], 4), np.float32))


def test_other_integer_dtypes_are_accepted(store: Store) -> None:
    store.put_many("items", np.array([3], dtype=np.int32), rows(np.array([3])))
    got = store.get_many("items", np.array([3], dtype=np.uint16))
    assert got.found.all()


def test_unknown_table(store: Store) -> None:
    with pytest.raises(UnknownTableError, match="'nope'"):
        store.table("nope")
    with pytest.raises(UnknownTableError):
        store.get_many("nope", np.array([1], dtype=np.int64))
    with pytest.raises(UnknownTableError):
        store.put_many("nope", np.array([1], dtype=np.int64), np.zeros((1, 4), np.float32))
    with pytest.raises(KeyError):  # also a KeyError, for mapping-minded callers
        store.table("nope")


def test_results_are_copies(store: Store) -> None:
    ids = np.array([1, 2], dtype=np.int64)
    store.put_many("items", ids, rows(ids))
    first = store.get_many("items", ids)
    first.vectors[:] = -1
    np.testing.assert_array_equal(store.get_many("items", ids).vectors, rows(ids))


def test_closed_store_refuses(opener: Opener, tmp_path: Path) -> None:
    s = opener(tmp_path / "db")
    _create(s, SPEC)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreClosedError):
        s.get_many("items", np.array([1], dtype=np.int64))
    assert issubclass(StoreClosedError, StorageError)


@st.composite
def _operations(draw: st.DrawFn) -> list[tuple[str, list[int], float]]:
    ops = st.tuples(
        st.sampled_from(["put", "get"]),
        st.lists(st.integers(0, 60), min_size=0, max_size=25),
        st.floats(-100, 100, allow_nan=False, width=32),
    )
    return draw(st.lists(ops, min_size=1, max_size=25))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_operations())
def test_behaves_like_a_dict(
    opener: Opener,
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, list[int], float]],
) -> None:
    s = opener(tmp_path_factory.mktemp("model"))
    _create(s, SPEC)
    reference: dict[int, np.ndarray] = {}
    try:
        for kind, raw, salt in ops:
            ids = np.array(raw, dtype=np.int64)
            if kind == "put":
                vectors = rows(ids, salt=salt)
                s.put_many("items", ids, vectors)
                for i, v in zip(raw, vectors, strict=True):
                    reference[i] = v
            else:
                got = s.get_many("items", ids)
                for i, v, f in zip(raw, got.vectors, got.found, strict=True):
                    assert f == (i in reference)
                    np.testing.assert_array_equal(v, reference.get(i, np.zeros(4, np.float32)))
    finally:
        s.close()
