"""The undo journal that makes a put of an embedded table all-or-nothing.

Appended rows are safe by construction (they sit past the committed row count until ``meta.json``
says otherwise); rows updated in place are not, because the memory-mapped file is written row by
row and a crash can stop anywhere in between. So before touching an existing row, ``put`` saves
the *old* rows here and makes the journal durable; only then does it overwrite them. After the
commit (``meta.json`` replaced) the journal is removed.

On open, a journal whose ``version`` is one past the committed version belongs to a put that never
committed: writing its old rows back restores the table exactly as it was committed, so a crash
leaves every vector old or new and, more strongly, the whole put either applied or not at all.
A journal that fails its checksum was itself interrupted, which means no row had been touched yet;
it is ignored. An undo log rather than a redo log because appended rows of the same call are
discarded by the commit rule anyway, so rolling back is what keeps a put atomic as a whole.

Layout: a 32-byte header (magic, version, row count, payload CRC-32, row width in bytes) and the
payload: int64 row numbers, then the old rows.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from storage._files import fsync_dir, pwrite_all
from storage.store import Ids

JOURNAL = "journal.bin"
_HEADER = struct.Struct("<4sQQII")
_MAGIC = b"JZU1"


class Undo(NamedTuple):
    """The rows to restore: row numbers and their committed contents."""

    version: int
    rows: Ids
    vectors: npt.NDArray[np.uint8]  # (k, row_bytes) raw bytes, whatever the dtype


def write(path: Path, version: int, rows: Ids, old: npt.NDArray[Any], *, durable: bool) -> None:
    """Save ``old`` (the current contents of ``rows``) before they are overwritten."""
    row_ids = np.ascontiguousarray(rows, dtype="<i8")
    data = np.ascontiguousarray(old)
    row_bytes = data.shape[1] * data.itemsize if data.ndim == 2 else 0
    crc = zlib.crc32(data.data, zlib.crc32(row_ids.data))
    header = _HEADER.pack(_MAGIC, version, row_ids.shape[0], crc, row_bytes)
    fd = os.open(path / JOURNAL, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pwrite_all(fd, header, 0)
        pwrite_all(fd, row_ids.data, _HEADER.size)
        pwrite_all(fd, data.data, _HEADER.size + row_ids.nbytes)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    if durable:
        fsync_dir(path)


def read(path: Path, row_bytes: int) -> Undo | None:
    """The journal of an interrupted put, or None if there is none or it is incomplete."""
    try:
        blob = (path / JOURNAL).read_bytes()
    except FileNotFoundError:
        return None
    if len(blob) < _HEADER.size:
        return None
    magic, version, k, crc, width = _HEADER.unpack_from(blob)
    end = _HEADER.size + k * (8 + row_bytes)
    if magic != _MAGIC or width != row_bytes or len(blob) != end:
        return None
    payload = memoryview(blob)[_HEADER.size :]
    if zlib.crc32(payload) != crc:
        return None
    rows = np.frombuffer(blob, dtype="<i8", count=k, offset=_HEADER.size).astype(np.int64)
    old = np.frombuffer(blob, dtype=np.uint8, offset=_HEADER.size + 8 * k).reshape(k, row_bytes)
    return Undo(version, rows, old)


def remove(path: Path) -> None:
    """Drop the journal once its put has committed (or its rows have been restored)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path / JOURNAL)
