"""The undo journal of the embedded store, without a process to kill (see test_storage_crash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage import EmbeddedStore, TableSpec, _journal
from storage._table import VECTORS

SPEC = TableSpec("t", 4)


def _store(root: Path) -> None:
    with EmbeddedStore(root) as store:
        store.create_table(SPEC)
        store.put_many("t", np.arange(10), np.ones((10, 4), dtype=np.float32))


def _crash_mid_put(root: Path, rows: np.ndarray) -> None:
    """What a writer killed mid-put leaves: a journal of old rows and new bytes over them."""
    old = np.ones((rows.shape[0], 4), dtype=np.float32)
    _journal.write(root / "t", 2, rows, old, durable=False)  # committed version is 1
    mm = np.memmap(root / "t" / VECTORS, dtype=np.float32, mode="r+")
    grid = mm.reshape(-1, 4)
    grid[rows[0], :2] = 7.0  # a torn row
    grid[rows[1:]] = 7.0
    mm.flush()


def test_reopening_undoes_an_interrupted_put(tmp_path: Path) -> None:
    _store(tmp_path)
    _crash_mid_put(tmp_path, np.array([2, 5, 6]))
    with EmbeddedStore(tmp_path, mode="r") as reader:  # private undo, file untouched
        np.testing.assert_array_equal(reader.get_many("t", np.arange(10)).vectors, 1.0)
    assert (tmp_path / "t" / _journal.JOURNAL).exists()
    with EmbeddedStore(tmp_path) as writer:
        np.testing.assert_array_equal(writer.get_many("t", np.arange(10)).vectors, 1.0)
    assert not (tmp_path / "t" / _journal.JOURNAL).exists()


def test_a_torn_or_stale_journal_is_ignored(tmp_path: Path) -> None:
    _store(tmp_path)
    _journal.write(tmp_path / "t", 1, np.array([3]), np.zeros((1, 4), np.float32), durable=False)
    with EmbeddedStore(tmp_path) as store:  # version 1 is committed: nothing to undo
        np.testing.assert_array_equal(store.get_many("t", np.array([3])).vectors, 1.0)
    _journal.write(tmp_path / "t", 2, np.array([3]), np.zeros((1, 4), np.float32), durable=False)
    path = tmp_path / "t" / _journal.JOURNAL
    path.write_bytes(path.read_bytes()[:-3])  # the journal itself was cut short
    assert _journal.read(tmp_path / "t", 16) is None
    with EmbeddedStore(tmp_path) as store:
        np.testing.assert_array_equal(store.get_many("t", np.array([3])).vectors, 1.0)


def test_a_failed_put_restores_the_rows_it_overwrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(tmp_path)
    with EmbeddedStore(tmp_path) as store:
        store.get_many("t", np.array([0]))

        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("storage._table.atomic_write", refuse)
        with pytest.raises(OSError):
            store.put_many("t", np.array([1, 2, 50]), np.full((3, 4), 9.0, dtype=np.float32))
        got = store.get_many("t", np.array([1, 2, 50]))
        np.testing.assert_array_equal(got.found, [True, True, False])
        np.testing.assert_array_equal(got.vectors[:2], 1.0)
        monkeypatch.undo()
        store.put_many("t", np.array([1, 50]), np.full((2, 4), 3.0, dtype=np.float32))
        assert store.count("t") == 11
    with EmbeddedStore(tmp_path, mode="r") as store:
        np.testing.assert_array_equal(
            store.get_many("t", np.array([1, 2, 50])).vectors[:, 0], [3, 1, 3]
        )
