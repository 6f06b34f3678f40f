"""Errors of the storage package.

Every message names the table (and the path or id where there is one), so a log line alone says
where to look. ``retriable`` tells a caller whether trying the same call again can help: it is
False for everything here, because these errors mean a wrong call or a damaged table, not a
passing fault; a network backend will raise retriable subclasses.

There is no project-wide root yet (storage sits below every other package), so the root here
derives from ``Exception`` directly.
"""

from __future__ import annotations


class StorageError(Exception):
    """Root of every error the storage package raises on purpose."""

    retriable: bool = False


class UnknownTableError(StorageError, KeyError):
    """The table was never created in this store.

    Also a ``KeyError``, so code that treats a store as a mapping of tables can catch it as such.
    """

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else ""


class TableExistsError(StorageError):
    """``create_table`` was asked for a table that already exists with another shape."""


class SchemaMismatchError(StorageError):
    """Vectors do not have the table's width or a floating dtype, or a spec changed under a name."""


class InvalidIdsError(StorageError, ValueError):
    """Ids are not a 1-D array of non-negative integers that fit in int64."""


class InvalidTableNameError(StorageError, ValueError):
    """A table name that cannot safely become a directory name."""


class CorruptTableError(StorageError):
    """A table's files on disk disagree with each other or cannot be read."""


class StoreClosedError(StorageError):
    """The store was used after ``close()``."""


class ReadOnlyStoreError(StorageError):
    """A write was attempted on a store opened with ``mode="r"``."""


class StoreLockedError(StorageError):
    """Another writer (in this or another process) holds the store's directory."""


class BackendUnavailableError(StorageError):
    """A network backend did not answer a call that cannot degrade (a write, a table's shape).

    Retriable: the same call may well succeed once the cluster is back.
    """

    retriable = True


class SecurityNotEnabledError(StorageError):
    """A user and password were configured for a cluster that runs without security.

    Not retriable: the client refuses every connection until the settings change.
    """
