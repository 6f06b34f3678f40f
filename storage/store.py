"""The one storage contract the stages see.

Stages ask for many ids at once because every backend (numpy gather, Aerospike batch_read) is far
cheaper per row in bulk; a per-id interface would force a Python loop onto the hot path.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol, runtime_checkable

import msgspec
import numpy as np
import numpy.typing as npt

DType = Literal["float32", "float16"]

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.floating]
Mask = npt.NDArray[np.bool_]


class TableSpec(msgspec.Struct, frozen=True):
    """Shape of one embedding table; every row of a table has the same width and dtype."""

    name: str
    dim: int
    dtype: DType = "float32"


class Lookup(NamedTuple):
    """Rows for the requested ids in request order.

    ``found[i]`` is False where the id has no row; ``vectors[i]`` is then the table's fallback
    (zeros), so callers can score every candidate and still count the misses.

    ``degraded`` is None when every id was asked of the store. Otherwise ``degraded[i]`` is True
    where the id got the fallback because a backend could not be asked in time (unreachable,
    slow, circuit breaker open) rather than because it has no row: the answer is still usable,
    but a stage should mark its response degraded. Always None for the embedded store.
    """

    vectors: Vectors
    found: Mask
    degraded: Mask | None = None


@runtime_checkable
class Store(Protocol):
    """Batch get and put of embedding rows, per table."""

    def table(self, name: str, /) -> TableSpec: ...

    def get_many(self, table: str, ids: Ids, /, *, deadline_ms: float | None = None) -> Lookup:
        """``deadline_ms`` (Unix epoch ms): when the answer stops being useful. A store that
        can wait on a network answers what it has by then and marks the rest degraded; a local
        one may ignore it."""
        ...

    def put_many(self, table: str, ids: Ids, vectors: Vectors, /) -> None: ...

    def close(self) -> None: ...
