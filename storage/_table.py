"""One table of the embedded store: an id index in RAM over row vectors in a memory-mapped file.

Files of a table directory:

- ``meta.json``  name, dim, dtype, committed row count, version. Replaced atomically; it is the
  commit point: rows past ``rows`` in the data files are leftovers of a write that never
  committed, and are ignored and later overwritten.
- ``ids.bin``    int64 id of each row, in row order, append-only: the source of truth for the
  index.
- ``vectors.bin`` the rows, ``dim`` values of ``dtype`` each, row i at byte i * row_bytes;
  memory-mapped, grown by half its size at a time.
- ``journal.bin`` the old contents of rows a put is overwriting, present only while a put runs
  (or after a crash in one): see ``storage/_journal.py``.
- ``index.npy``  a snapshot of the sorted index, shape (2, K): ids and row numbers of the first K
  rows. An optimization only: opening loads it and sorts just the rows appended since; if it is
  missing or unreadable the index is rebuilt from ``ids.bin``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from storage import _journal
from storage._arrays import last_wins, zeros
from storage._files import atomic_write, pwrite_all, reserve
from storage._index import Index, Rows
from storage.errors import CorruptTableError
from storage.metrics import TierMetrics
from storage.store import DType, Ids, Lookup, TableSpec, Vectors

FORMAT = 1
META = "meta.json"
IDS = "ids.bin"
VECTORS = "vectors.bin"
INDEX = "index.npy"
_FIRST_ROWS = 1024  # first allocation of vectors.bin
_SNAPSHOT_MIN_ROWS = 65536  # tails shorter than this are cheap to sort on open


class Meta(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The commit record of a table (``meta.json``)."""

    name: str
    dim: int
    dtype: DType
    rows: int = 0
    version: int = 0
    format: int = FORMAT

    @property
    def spec(self) -> TableSpec:
        return TableSpec(self.name, self.dim, self.dtype)


def encode_meta(meta: Meta) -> bytes:
    return msgspec.json.format(msgspec.json.encode(meta), indent=2) + b"\n"


def read_meta(path: Path, name: str) -> Meta:
    try:
        meta = msgspec.json.decode((path / META).read_bytes(), type=Meta)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as e:
        raise CorruptTableError(f"table {name!r}: cannot read {path / META}: {e}") from e
    if meta.name != name or meta.format != FORMAT or meta.dim < 1 or meta.rows < 0:
        raise CorruptTableError(f"table {name!r}: {path / META} does not describe it: {meta}")
    return meta


class Table:
    """Callers hold ``lock`` around every method: a remap must not race a gather."""

    def __init__(self, path: Path, meta: Meta, *, writable: bool, durable: bool) -> None:
        self.path = path
        self.spec = meta.spec
        self.rows = meta.rows
        self.version = meta.version
        self.writable = writable
        self.durable = durable
        self.row_bytes = self.spec.dim * np.dtype(self.spec.dtype).itemsize
        self.lock = threading.Lock()
        self.metrics = TierMetrics(self.spec.name, "embedded")
        self._ids_fd = self._vec_fd = -1
        self._mm: mmap.mmap | None = None
        self._vec: npt.NDArray[Any] = zeros(self.spec, 0)
        self._private = False  # a reader that had to undo an interrupted put in its own copy
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            self._ids_fd = os.open(path / IDS, flags)
            self._vec_fd = os.open(path / VECTORS, flags)
            ids_size = os.fstat(self._ids_fd).st_size
            vec_size = os.fstat(self._vec_fd).st_size
            if ids_size < self.rows * 8 or vec_size < self.rows * self.row_bytes:
                raise CorruptTableError(
                    f"table {self.spec.name!r}: {path} commits {self.rows} rows but holds "
                    f"{ids_size // 8} ids and {vec_size // self.row_bytes} vectors"
                )
            undo = _journal.read(path, self.row_bytes)
            pending = undo is not None and undo.version == self.version + 1
            self._private = pending and not writable
            self._map()
            if pending and undo is not None:
                self._restore(undo.rows, undo.vectors)
            if writable:
                _journal.remove(path)
            self.index, self.indexed = self._load_index()
        except BaseException:
            self.close(snapshot=False)
            raise
        self.metrics.bytes.set(self.nbytes)

    @property
    def nbytes(self) -> int:
        return self.rows * (self.row_bytes + 8)

    # -- files ---------------------------------------------------------------------------------

    def _map(self) -> None:
        self._vec = zeros(self.spec, 0)  # drop the old view before unmapping
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        capacity = os.fstat(self._vec_fd).st_size // self.row_bytes
        if capacity == 0:
            return
        access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
        if self._private:
            access = mmap.ACCESS_COPY  # private pages: the reader's undo never reaches the file
        self._mm = mmap.mmap(self._vec_fd, capacity * self.row_bytes, access=access)
        flat = np.frombuffer(self._mm, dtype=self.spec.dtype, count=capacity * self.spec.dim)
        self._vec = flat.reshape(capacity, self.spec.dim)

    def _restore(self, rows: Ids, old: npt.NDArray[Any]) -> None:
        """Write back rows saved by the journal of a put that never committed."""
        if rows.shape[0] == 0:
            return
        if int(rows.max()) >= self._vec.shape[0] or int(rows.min()) < 0:
            raise CorruptTableError(
                f"table {self.spec.name!r}: {self.path / _journal.JOURNAL} names rows past the "
                f"end of {self.path / VECTORS}"
            )
        self._vec.view(np.uint8)[rows] = old.reshape(rows.shape[0], -1).view(np.uint8)
        if self.writable and self._mm is not None:
            self._mm.flush()  # the restored rows must be on disk before the journal goes

    def _read_ids(self, start: int, stop: int) -> Ids:
        n = stop - start
        data = os.pread(self._ids_fd, n * 8, start * 8)
        if len(data) != n * 8:
            raise CorruptTableError(f"table {self.spec.name!r}: {self.path / IDS} is short")
        return np.frombuffer(data, dtype=np.int64).copy()

    def _load_index(self) -> tuple[Index, int]:
        ids: Ids = np.empty(0, dtype=np.int64)
        rows: Rows = np.empty(0, dtype=np.int64)
        try:
            snap = np.load(self.path / INDEX, allow_pickle=False)
            shape_ok = snap.ndim == 2 and snap.shape[0] == 2 and snap.shape[1] <= self.rows
            if snap.dtype == np.int64 and shape_ok:
                ids, rows = snap[0], snap[1]
                # cheap, whole-array sanity checks; a snapshot failing them is just rebuilt
                if not (np.all(ids[1:] > ids[:-1]) and np.all((rows >= 0) & (rows < self.rows))):
                    ids, rows = ids[:0], rows[:0]
        except (OSError, ValueError, EOFError):
            pass  # no snapshot, or a damaged one: rebuild from ids.bin
        index = Index(ids, rows)
        indexed = len(index)
        tail = self._read_ids(indexed, self.rows)
        if tail.shape[0]:
            uniq, counts = np.unique(tail, return_counts=True)
            clash = np.concatenate((uniq[counts > 1], index.contains_any(uniq)))
            if clash.shape[0]:
                raise CorruptTableError(
                    f"table {self.spec.name!r}: id {int(clash[0])} has two rows in "
                    f"{self.path / IDS}"
                )
            index = index.with_rows(tail, np.arange(indexed, self.rows, dtype=np.int64))
        return index, indexed

    def snapshot(self) -> None:
        """Write the sorted index, so the next open sorts only the rows appended after now."""
        if not self.writable or self.indexed == self.rows:
            return
        tmp = self.path / f".{INDEX}.tmp"
        with open(tmp, "wb") as f:
            header = {"descr": "<i8", "fortran_order": False, "shape": (2, self.rows)}
            np.lib.format.write_array_header_2_0(f, header)
            f.write(np.ascontiguousarray(self.index.ids, dtype="<i8").data)
            f.write(np.ascontiguousarray(self.index.rows, dtype="<i8").data)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path / INDEX)
        self.indexed = self.rows

    def _ensure(self, rows: int) -> None:
        capacity = self._vec.shape[0]
        if rows <= capacity:
            return
        capacity = max(rows, capacity * 3 // 2, _FIRST_ROWS)
        self._vec = zeros(self.spec, 0)
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        reserve(self._vec_fd, capacity * self.row_bytes)
        self._map()

    # -- operations ----------------------------------------------------------------------------

    def get(self, ids: Ids) -> Lookup:
        start = time.perf_counter()
        n = ids.shape[0]
        if self.rows == 0 or n == 0:
            looked = Lookup(zeros(self.spec, n), np.zeros(n, dtype=np.bool_))
        else:
            rows, found = self.index.locate(ids)
            missing = ~found
            vectors = np.take(self._vec, rows, axis=0)
            vectors[missing] = 0
            looked = Lookup(vectors, found)
        hits = int(np.count_nonzero(looked.found))
        self.metrics.record(hits, n, time.perf_counter() - start)
        self.metrics.fallback.inc(n - hits)
        return looked

    def put(self, ids: Ids, vectors: Vectors) -> None:
        """Append new ids, update known ones in place, then commit by replacing meta.json.

        All or nothing, even across a crash: the rows being overwritten are saved to the undo
        journal first (see ``storage/_journal.py``), and appended rows count only once
        ``meta.json`` says so. If this call fails, it restores the old rows before raising.
        """
        uniq, last = last_wins(ids)
        vectors = vectors[last]
        rows, known = self.index.locate(uniq)
        fresh = ~known
        new_ids = uniq[fresh]
        start, k = self.rows, new_ids.shape[0]
        if k:
            self._ensure(start + k)  # may fail (a full disk): before any row is touched
        updated = rows[known]
        old = np.take(self._vec, updated, axis=0)
        if updated.shape[0]:
            _journal.write(self.path, self.version + 1, updated, old, durable=self.durable)
        meta = Meta(self.spec.name, self.spec.dim, self.spec.dtype, start + k, self.version + 1)
        try:
            if updated.shape[0]:
                self._vec[updated] = vectors[known]
            if k:
                self._vec[start : start + k] = vectors[fresh]
                pwrite_all(self._ids_fd, np.ascontiguousarray(new_ids).data, start * 8)
            if self.durable:
                if self._mm is not None:
                    self._mm.flush()
                os.fsync(self._ids_fd)
            # computed before the commit so that nothing can fail between it and the swap
            index = self.index.with_rows(new_ids, np.arange(start, start + k, dtype=np.int64))
            atomic_write(self.path / META, encode_meta(meta), durable=self.durable)
        except BaseException:
            if not self._committed(meta.version):
                self._vec[updated] = old
                _journal.remove(self.path)
            raise
        if updated.shape[0]:
            _journal.remove(self.path)
        self.rows, self.version = meta.rows, meta.version
        self.index = index
        if self.rows - self.indexed >= max(_SNAPSHOT_MIN_ROWS, self.indexed // 4):
            self.snapshot()
        self.metrics.bytes.set(self.nbytes)

    def _committed(self, version: int) -> bool:
        """Whether ``meta.json`` on disk already holds ``version`` (a failure after the swap)."""
        try:
            return read_meta(self.path, self.spec.name).version >= version
        except CorruptTableError:
            return False

    def close(self, *, snapshot: bool = True) -> None:
        if snapshot and self.rows - self.indexed > 0:
            with contextlib.suppress(OSError):  # only an optimization; closing must go on
                self.snapshot()
        self._vec = zeros(self.spec, 0)
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        for fd in (self._ids_fd, self._vec_fd):
            if fd >= 0:
                os.close(fd)
        self._ids_fd = self._vec_fd = -1
