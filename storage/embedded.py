"""EmbeddedStore: the default backend on one machine, in the role Aerospike plays on many.

Like Aerospike's hybrid-memory layout, the index lives in RAM (sorted int64 ids and their row
numbers) and the vectors on local disk (a memory-mapped file per table). A batch lookup is one
``np.searchsorted`` and one gather from the map, so it runs at page-cache speed with no Python
work per id; opening a table loads an index snapshot instead of touching rows.

What a write guarantees (phase 1; see ``storage/_table.py`` for the files):

- ``put_many`` is all or nothing, across a crash too. New rows go past the committed end; rows
  of known ids are overwritten in place only after their old contents are saved in an undo
  journal (``storage/_journal.py``); ``meta.json``, replaced atomically, is the commit. A table
  reopened after a crash rolls an uncommitted put back, so every vector is old or new, never
  torn, and the put's appended rows are all there or all absent
  (``tests/unit/storage/test_storage_crash.py`` proves it by SIGKILLing a writer).
- With ``durable=False`` nothing is fsynced: a process crash loses nothing (the page cache
  survives it) but a power cut may lose recent calls, though still only back to a committed state
  of ``meta.json`` as the file system persisted it.
- One writer per directory, enforced with a lock file; any number of ``mode="r"`` readers, each
  seeing a table as it was committed when that reader first opened it (updates in place may show
  through sooner, since the map is shared). A reader that opens a table a crashed writer left
  mid-put undoes the put in a private copy-on-write map, without touching the file.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Literal

from storage._arrays import as_ids, as_vectors
from storage._closing import ClosesOnExit
from storage._files import DirLock, atomic_write, fsync_dir
from storage._table import IDS, META, VECTORS, Meta, Table, encode_meta, read_meta
from storage.errors import (
    CorruptTableError,
    InvalidTableNameError,
    ReadOnlyStoreError,
    SchemaMismatchError,
    StorageError,
    StoreClosedError,
    TableExistsError,
    UnknownTableError,
)
from storage.store import Lookup, TableSpec

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DTYPES = ("float32", "float16")


class EmbeddedStore(ClosesOnExit):
    """Tables of embedding rows under one directory (see the module docstring for guarantees).

    ``mode="rw"`` creates the directory if needed and takes the writer lock; ``mode="r"`` opens
    an existing store without a lock, for worker processes that only read. ``durable=False``
    skips fsync, for bulk loads that can be redone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        /,
        *,
        mode: Literal["rw", "r"] = "rw",
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        self.durable = durable
        self._tables: dict[str, Table] = {}
        self._guard = threading.Lock()
        self._closed = False
        self._lock: DirLock | None = None
        if mode == "rw":
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = DirLock(self.path)
            self._remove_leftovers()
        elif not self.path.is_dir():
            raise StorageError(f"store {self.path}: no such directory")

    def _remove_leftovers(self) -> None:
        """Directories of create_table calls that crashed before their rename."""
        for p in self.path.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    # -- tables --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self.path}: used after close()")

    def _check_writable(self, what: str) -> None:
        if self.mode != "rw":
            raise ReadOnlyStoreError(f"store {self.path}: {what} needs mode='rw'")

    def _open(self, name: str) -> Table:
        table = self._tables.get(name)
        if table is not None:
            return table
        with self._guard:
            self._check_open()
            table = self._tables.get(name)
            if table is None:
                path = self._dir(name)
                if not (path / META).is_file():
                    raise UnknownTableError(f"table {name!r}: not in store {self.path}")
                meta = read_meta(path, name)
                try:
                    table = Table(path, meta, writable=self.mode == "rw", durable=self.durable)
                except OSError as e:  # removed or unreadable files: say which table, and where
                    raise CorruptTableError(f"table {name!r}: cannot open {path}: {e}") from e
                self._tables[name] = table
            return table

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidTableNameError(
                f"table {name!r}: names are 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
            )
        return self.path / name

    def tables(self) -> list[str]:
        """Names of the tables in the store, sorted."""
        self._check_open()
        return sorted(
            p.name for p in self.path.iterdir() if _NAME.fullmatch(p.name) and (p / META).is_file()
        )

    def create_table(self, spec: TableSpec, /, *, exist_ok: bool = False) -> None:
        """Create an empty table; with ``exist_ok``, an identical existing table is fine."""
        self._check_open()
        self._check_writable(f"create_table({spec.name!r})")
        path = self._dir(spec.name)
        if not isinstance(spec.dim, int) or spec.dim < 1 or spec.dtype not in _DTYPES:
            raise SchemaMismatchError(
                f"table {spec.name!r}: dim must be an int >= 1 and dtype one of {_DTYPES}, "
                f"got dim={spec.dim!r} dtype={spec.dtype!r}"
            )
        with self._guard:
            if (path / META).is_file():
                existing = read_meta(path, spec.name).spec
                if exist_ok and existing == spec:
                    return
                raise TableExistsError(
                    f"table {spec.name!r}: already in store {self.path} as {existing}"
                )
            tmp = self.path / f".{spec.name}.tmp-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for file in (IDS, VECTORS):
                (tmp / file).touch()
            atomic_write(
                tmp / META, encode_meta(Meta(spec.name, spec.dim, spec.dtype)), durable=self.durable
            )
            try:
                os.rename(tmp, path)
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise TableExistsError(f"table {spec.name!r}: {path} already exists") from e
            if self.durable:
                fsync_dir(self.path)

    def table(self, name: str, /) -> TableSpec:
        self._check_open()
        return self._open(name).spec

    def count(self, name: str, /) -> int:
        """Committed rows of a table."""
        self._check_open()
        return self._open(name).rows

    # -- rows ----------------------------------------------------------------------------------

    def get_many(self, table: str, ids: Any, /, *, deadline_ms: float | None = None) -> Lookup:
        # Local reads from the page cache or disk: bounded already, so the deadline is unused.
        self._check_open()
        t = self._open(table)
        checked = as_ids(table, ids)
        with t.lock:
            self._check_open()
            return t.get(checked)

    def put_many(self, table: str, ids: Any, vectors: Any, /) -> None:
        self._check_open()
        self._check_writable(f"put_many({table!r})")
        t = self._open(table)
        checked = as_ids(table, ids)
        rows = as_vectors(t.spec, vectors, checked.shape[0])
        if checked.shape[0] == 0:
            return
        with t.lock:
            self._check_open()
            t.put(checked, rows)

    def checkpoint(self) -> None:
        """Snapshot every open table's index now, so the next open is as fast as it can be."""
        self._check_open()
        for t in list(self._tables.values()):
            with t.lock:
                t.snapshot()

    def close(self) -> None:
        """Snapshot indexes, unmap, release the lock; idempotent."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
            for t in self._tables.values():
                with t.lock:
                    t.close(snapshot=self.mode == "rw")
            self._tables.clear()
            if self._lock is not None:
                self._lock.release()

    def __repr__(self) -> str:
        return f"EmbeddedStore({str(self.path)!r}, mode={self.mode!r})"
