"""EmbeddedStore specifics: files on disk, what survives a crash, locking, the two index forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storage import EmbeddedStore, TableSpec
from storage._table import IDS, INDEX, META, VECTORS
from storage.errors import (
    CorruptTableError,
    InvalidTableNameError,
    ReadOnlyStoreError,
    SchemaMismatchError,
    StorageError,
    StoreLockedError,
    TableExistsError,
    UnknownTableError,
)

SPEC = TableSpec("items", 3)


def rows(ids: np.ndarray, salt: float = 0.0) -> np.ndarray:
    return (ids[:, None] * 10 + np.arange(3) + salt).astype(np.float32)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "db"


def make(root: Path, ids: np.ndarray, **kwargs: bool) -> None:
    with EmbeddedStore(root, **kwargs) as s:  # type: ignore[arg-type]
        s.create_table(SPEC)
        s.put_many("items", ids, rows(ids))


def test_layout_and_meta(root: Path) -> None:
    make(root, np.array([5, 1, 9]))
    table = root / "items"
    meta = json.loads((table / META).read_text())
    assert meta == {
        "name": "items",
        "dim": 3,
        "dtype": "float32",
        "rows": 3,
        "version": 1,
        "format": 1,
    }
    assert (table / IDS).stat().st_size >= 3 * 8
    assert (table / VECTORS).stat().st_size >= 3 * 12
    assert (table / INDEX).exists()  # written on close
    assert not [p for p in table.iterdir() if p.name.startswith(".")]  # no temp files left


def test_reopen_is_fast_path_and_rebuild_path_agree(root: Path) -> None:
    ids = np.random.default_rng(0).choice(10**6, size=3000, replace=False)
    make(root, ids)
    with EmbeddedStore(root, mode="r") as s:
        with_snapshot = s.get_many("items", ids)
    (root / "items" / INDEX).unlink()
    with EmbeddedStore(root, mode="r") as s:
        rebuilt = s.get_many("items", ids)
    (root / "items" / INDEX).write_bytes(b"garbage")
    with EmbeddedStore(root, mode="r") as s:
        from_garbage = s.get_many("items", ids)
    for got in (with_snapshot, rebuilt, from_garbage):
        assert got.found.all()
        np.testing.assert_array_equal(got.vectors, rows(ids))


def test_snapshot_plus_tail_after_a_process_died_without_close(root: Path) -> None:
    make(root, np.arange(100))  # close() snapshots the index of 100 rows
    s = EmbeddedStore(root)
    s.put_many("items", np.arange(100, 150), rows(np.arange(100, 150)))
    assert np.load(root / "items" / INDEX).shape == (2, 100)
    assert s._lock is not None
    s._lock.release()  # the kernel would drop the lock of a dead process; close() never runs
    with EmbeddedStore(root) as s2:
        got = s2.get_many("items", np.arange(160))
        assert got.found.sum() == 150
        np.testing.assert_array_equal(got.vectors[:150], rows(np.arange(150)))


def test_uncommitted_tail_is_ignored_then_overwritten(root: Path) -> None:
    make(root, np.array([1, 2]))
    table = root / "items"
    # a crash after appending rows but before meta.json was replaced
    with open(table / IDS, "ab") as f:
        f.write(np.array([77, 78], dtype=np.int64).tobytes())
    with open(table / VECTORS, "r+b") as f:
        f.seek(2 * 12)
        f.write(rows(np.array([77, 78])).tobytes())
    with EmbeddedStore(root) as s:
        assert s.count("items") == 2
        assert not s.get_many("items", np.array([77, 78])).found.any()
        s.put_many("items", np.array([3]), rows(np.array([3])))
    with EmbeddedStore(root) as s:
        got = s.get_many("items", np.array([1, 2, 3, 77]))
        np.testing.assert_array_equal(got.found, [True, True, True, False])
        np.testing.assert_array_equal(got.vectors[:3], rows(np.array([1, 2, 3])))


def test_damaged_tables_say_where(root: Path) -> None:
    make(root, np.array([1, 2]))
    meta_path = root / "items" / META
    meta_path.write_text("{not json")
    with EmbeddedStore(root) as s, pytest.raises(CorruptTableError, match=r"meta\.json"):
        s.get_many("items", np.array([1]))
    meta_path.write_text(json.dumps({"name": "items", "dim": 3, "dtype": "float32", "rows": 9}))
    with EmbeddedStore(root) as s, pytest.raises(CorruptTableError, match="commits 9 rows"):
        s.table("items")


def test_duplicate_ids_on_disk_are_corruption(root: Path) -> None:
    make(root, np.array([1, 2]))
    (root / "items" / INDEX).unlink()
    with open(root / "items" / IDS, "r+b") as f:
        f.write(np.array([2, 2], dtype=np.int64).tobytes())
    with EmbeddedStore(root) as s, pytest.raises(CorruptTableError, match="id 2 has two rows"):
        s.table("items")


def test_one_writer_many_readers(root: Path) -> None:
    writer = EmbeddedStore(root)
    writer.create_table(SPEC)
    writer.put_many("items", np.array([1]), rows(np.array([1])))
    with pytest.raises(StoreLockedError, match="LOCK"):
        EmbeddedStore(root)
    reader = EmbeddedStore(root, mode="r")
    assert reader.get_many("items", np.array([1])).found.all()
    with pytest.raises(ReadOnlyStoreError):
        reader.put_many("items", np.array([2]), rows(np.array([2])))
    with pytest.raises(ReadOnlyStoreError):
        reader.create_table(TableSpec("other", 2))
    reader.close()
    writer.close()
    EmbeddedStore(root).close()  # the lock is released on close
    with pytest.raises(StorageError, match="no such directory"):
        EmbeddedStore(root / "absent", mode="r")


def test_create_table_rules(root: Path) -> None:
    with EmbeddedStore(root) as s:
        s.create_table(SPEC)
        s.create_table(SPEC, exist_ok=True)
        with pytest.raises(TableExistsError, match="'items'"):
            s.create_table(SPEC)
        with pytest.raises(TableExistsError):
            s.create_table(TableSpec("items", 4), exist_ok=True)
        for bad in ("", ".hidden", "a/b", "-x", "x" * 200):
            with pytest.raises(InvalidTableNameError):
                s.create_table(TableSpec(bad, 3))
        with pytest.raises(SchemaMismatchError):
            s.create_table(TableSpec("zero", 0))
        with pytest.raises(SchemaMismatchError):
            s.create_table(TableSpec("ints", 2, "int8"))  # type: ignore[arg-type]
        s.create_table(TableSpec("users", 2, "float16"))
        assert s.tables() == ["items", "users"]
        with pytest.raises(UnknownTableError):
            s.table("absent")


def test_leftovers_of_a_crashed_create_are_removed(root: Path) -> None:
    root.mkdir()
    (root / ".items.tmp-1-2").mkdir()
    with EmbeddedStore(root) as s:
        assert s.tables() == []
    assert not (root / ".items.tmp-1-2").exists()


def test_growth_across_many_puts(root: Path) -> None:
    with EmbeddedStore(root, durable=False) as s:
        s.create_table(SPEC)
        for start in range(0, 5000, 700):  # crosses several remaps of vectors.bin
            ids = np.arange(start, start + 700)
            s.put_many("items", ids, rows(ids))
        s.put_many("items", np.arange(0, 5600, 7), rows(np.arange(0, 5600, 7), salt=0.5))
        expected = rows(np.arange(5600))
        expected[::7] += 0.5
        got = s.get_many("items", np.arange(5600))
        assert got.found.all()
        np.testing.assert_array_equal(got.vectors, expected)
        assert s.count("items") == 5600


def test_dense_then_sparse_ids(root: Path) -> None:
    with EmbeddedStore(root) as s:
        s.create_table(SPEC)
        dense = np.arange(1000)
        s.put_many("items", dense, rows(dense))
        assert s._open("items").index.row_of is not None
        sparse = np.array([2**62, 2**40 + 3, 123_456_789])
        s.put_many("items", sparse, rows(sparse % 1000, salt=0.25))
        assert s._open("items").index.row_of is None
        query = np.concatenate((sparse, dense, [2**61]))
        got = s.get_many("items", query)
        np.testing.assert_array_equal(got.found, [True] * 1003 + [False])
        np.testing.assert_array_equal(got.vectors[:3], rows(sparse % 1000, salt=0.25))
        np.testing.assert_array_equal(got.vectors[3:1003], rows(dense))


def test_a_failed_commit_leaves_the_last_committed_state(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(root, np.array([1, 2]))
    with EmbeddedStore(root) as s:
        s.table("items")

        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("storage._table.atomic_write", fail)
        with pytest.raises(OSError, match="No space"):
            s.put_many("items", np.array([3]), rows(np.array([3])))
        assert s.count("items") == 2
        assert not s.get_many("items", np.array([3])).found.any()
        monkeypatch.undo()
        s.put_many("items", np.array([4]), rows(np.array([4])))
    with EmbeddedStore(root) as s:
        got = s.get_many("items", np.array([1, 2, 3, 4]))
        np.testing.assert_array_equal(got.found, [True, True, False, True])
        np.testing.assert_array_equal(got.vectors[3], rows(np.array([4]))[0])


def test_reader_sees_what_was_committed_when_it_opened(root: Path) -> None:
    make(root, np.array([1]))
    with EmbeddedStore(root, mode="r") as reader:
        assert reader.count("items") == 1
        with EmbeddedStore(root) as writer:
            writer.put_many("items", np.array([2]), rows(np.array([2])))
        assert not reader.get_many("items", np.array([2])).found.any()
    with EmbeddedStore(root, mode="r") as reader:
        assert reader.get_many("items", np.array([2])).found.all()
