"""Seeded synthetic embedding tables and the power-law id sampler requests are drawn with.

Rows depend only on (seed, row id), not on the chunk size or the order of writing: each block of
``_BLOCK_ROWS`` rows comes from its own generator seeded with (seed, block). So a demo, a test
and a benchmark that share a seed share the table, whatever batch size each uses to build it.
"""

from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from storage.errors import SchemaMismatchError, UnknownTableError
from storage.store import Ids, Store, TableSpec

_BLOCK_ROWS = 4096


@runtime_checkable
class _CreatesTables(Protocol):
    def create_table(self, spec: TableSpec, /, *, exist_ok: bool = False) -> None: ...


def synthetic_rows(spec: TableSpec, seed: int, start: int, stop: int) -> npt.NDArray[np.floating]:
    """Rows ``start..stop`` of the synthetic table: unit-variance normals scaled by 1/sqrt(dim).

    The scale keeps dot products of two rows near unit size whatever the width, which is what a
    scoring model expects of trained embeddings.
    """
    if not 0 <= start <= stop:
        raise ValueError(f"rows must satisfy 0 <= start <= stop, got {start}..{stop}")
    out = np.empty((stop - start, spec.dim), dtype=spec.dtype)
    scale = np.float32(1.0 / np.sqrt(spec.dim))
    for block in range(start // _BLOCK_ROWS, -(-stop // _BLOCK_ROWS)):
        lo = block * _BLOCK_ROWS
        rng = np.random.default_rng([seed, block])
        rows = rng.standard_normal((_BLOCK_ROWS, spec.dim), dtype=np.float32) * scale
        a, b = max(start, lo), min(stop, lo + _BLOCK_ROWS)
        out[a - start : b - start] = rows[a - lo : b - lo]
    return out


def generate_table(
    store: Store, spec: TableSpec, rows: int, seed: int, *, chunk: int = 65536
) -> None:
    """Fill ``spec.name`` with ids ``0..rows-1`` and their synthetic rows, ``chunk`` at a time.

    Creates the table if the store can (the embedded store can); a table that exists must have
    the same shape.
    """
    if rows < 0 or chunk < 1:
        raise ValueError(f"rows must be >= 0 and chunk >= 1, got rows={rows} chunk={chunk}")
    try:
        existing = store.table(spec.name)
    except UnknownTableError:
        if not isinstance(store, _CreatesTables):
            raise
        store.create_table(spec)
        existing = store.table(spec.name)
    if existing != spec:
        raise SchemaMismatchError(f"table {spec.name!r}: store has {existing}, asked for {spec}")
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        ids = np.arange(start, stop, dtype=np.int64)
        store.put_many(spec.name, ids, synthetic_rows(spec, seed, start, stop))


class ZipfSampler:
    """Ids drawn with P(rank k) proportional to 1 / k**exponent, by inverse CDF.

    Ranks map to ids through a permutation fixed by ``seed``, so the popular ids are scattered
    over the id space (as real ones are) yet the same on every call, process and run.
    """

    def __init__(self, n_items: int, exponent: float, *, seed: int = 0) -> None:
        if n_items < 1 or exponent < 0:
            raise ValueError(f"need n_items >= 1 and exponent >= 0, got {n_items}, {exponent}")
        self.n_items = n_items
        self.exponent = exponent
        weights = np.arange(1, n_items + 1, dtype=np.float64) ** -exponent
        self.cdf = np.cumsum(weights)
        self.cdf /= self.cdf[-1]
        self.ids: Ids = np.random.default_rng([seed, n_items]).permutation(n_items)

    def probabilities(self) -> npt.NDArray[np.float64]:
        """Probability of each rank, most popular first (the ideal static cache keeps a prefix)."""
        return np.diff(self.cdf, prepend=0.0)

    def __call__(self, rng: np.random.Generator, size: int) -> Ids:
        ranks = np.searchsorted(self.cdf, rng.random(size), side="right")
        np.minimum(ranks, self.n_items - 1, out=ranks)  # guards the float edge u == cdf[-1]
        return self.ids[ranks]


@functools.lru_cache(maxsize=4)
def _sampler(n_items: int, exponent: float) -> ZipfSampler:
    return ZipfSampler(n_items, exponent)


def zipf_ids(rng: np.random.Generator, n_items: int, size: int, exponent: float) -> Ids:
    """``size`` ids in [0, n_items) from a Zipf law; the rank-to-id map is shared and cached."""
    return _sampler(n_items, float(exponent))(rng, size)
