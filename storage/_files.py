"""File primitives the embedded store builds its (cheap) safety on.

The pattern everywhere: write new bytes to a fresh file, fsync it, ``os.replace`` it over the old
name, fsync the directory. A reader then sees the old file or the new one, never a torn mix,
because rename is atomic on POSIX file systems.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from storage.errors import StoreLockedError


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool) -> None:
    """Replace ``path`` with ``data`` all at once (see the module docstring)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    """``os.pwrite`` until every byte is written (a write may be short)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def reserve(fd: int, size: int) -> None:
    """Grow a file to ``size`` bytes with the blocks allocated now.

    A memory-mapped write into a sparse hole on a full disk kills the process with SIGBUS;
    allocating up front turns that into an ordinary ``OSError(ENOSPC)`` here.
    """
    current = os.fstat(fd).st_size
    if size <= current:
        return
    try:
        os.posix_fallocate(fd, current, size - current)
    except (AttributeError, OSError) as e:
        # Some file systems (tmpfs on old kernels, some FUSE) refuse fallocate: fall back to a
        # sparse extension, but a full disk must still be reported as such.
        if isinstance(e, OSError) and e.errno == 28:  # ENOSPC
            raise
        os.ftruncate(fd, size)


class DirLock:
    """An exclusive advisory lock on a store directory, so two writers never interleave.

    ``flock`` locks belong to an open file, so a second writer in the same process is refused
    just like one in another process, and the kernel drops the lock if the process dies.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "LOCK"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise StoreLockedError(
                f"store {root}: another writer holds {self.path}; open it with mode='r' to read"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
