"""Argument checks and array helpers shared by every backend.

Checks are whole-array numpy reductions (a min, a shape compare), so they cost microseconds per
batch and let the hot paths assume clean input: the cache relies on ids being >= 0 because it
marks empty slots with -1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from storage.errors import InvalidIdsError, SchemaMismatchError
from storage.store import Ids, TableSpec

_INT64_MAX = np.iinfo(np.int64).max


def as_ids(table: str, ids: Any) -> Ids:
    """``ids`` as a 1-D int64 array, or InvalidIdsError naming the first bad position."""
    a = np.asarray(ids)
    if a.ndim != 1:
        raise InvalidIdsError(f"table {table!r}: ids must be 1-D, got shape {a.shape}")
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    if a.dtype != np.int64:
        if a.dtype.kind not in "iu":
            raise InvalidIdsError(f"table {table!r}: ids must be integers, got dtype {a.dtype}")
        if a.dtype.kind == "u" and int(a.max()) > _INT64_MAX:
            i = int(np.argmax(a > _INT64_MAX))
            raise InvalidIdsError(f"table {table!r}: ids[{i}] = {int(a[i])} does not fit in int64")
        a = a.astype(np.int64)
    if int(a.min()) < 0:
        i = int(np.argmax(a < 0))
        raise InvalidIdsError(f"table {table!r}: ids[{i}] = {int(a[i])} is negative")
    return a


def as_vectors(spec: TableSpec, vectors: Any, n: int) -> npt.NDArray[Any]:
    """Return ``vectors`` as a C-contiguous (n, dim) array of the table's dtype.

    Any floating input is accepted and cast (float64 arrays are what numpy hands out by default);
    integers and other kinds are refused because they are almost always a mixed-up argument.
    """
    v = np.asarray(vectors)
    if v.shape != (n, spec.dim):
        raise SchemaMismatchError(
            f"table {spec.name!r}: vectors have shape {v.shape}, expected ({n}, {spec.dim})"
        )
    if v.dtype.kind != "f":
        raise SchemaMismatchError(
            f"table {spec.name!r}: vectors must be floating ({spec.dtype}), got dtype {v.dtype}"
        )
    return np.ascontiguousarray(v, dtype=spec.dtype)


def last_wins(ids: Ids) -> tuple[Ids, npt.NDArray[np.intp]]:
    """Distinct ids (sorted) and, for each, the position of its last occurrence in ``ids``.

    A batch that writes one id twice means the later row, as a loop of single puts would.
    """
    n = ids.shape[0]
    uniq, first_in_reversed = np.unique(ids[::-1], return_index=True)
    return uniq, (n - 1) - first_in_reversed


def zeros(spec: TableSpec, n: int) -> npt.NDArray[Any]:
    """The fallback rows for ``n`` ids with no row."""
    return np.zeros((n, spec.dim), dtype=spec.dtype)
