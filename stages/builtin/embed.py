"""embed: candidate embeddings for every request of the batch in one store lookup.

All candidate ids of the micro-batch are concatenated, looked up at once (the cache and the backend
both pay per call, not per id), and split back into per-request views of the same array.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from stages.events import Event
from stages.stage import BaseStage, Result
from storage import Store


class Embed(BaseStage):
    """Attaches ``item_vecs`` (candidates x dim) and the count of candidates with no row."""

    name = "embed"

    def __init__(self, store: Store, *, table: str = "items") -> None:
        self._store = store
        self._table = table

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        if not batch:
            return []
        counts = np.fromiter((len(e.candidates) for e in batch), dtype=np.int64, count=len(batch))
        ids = np.concatenate([e.candidates for e in batch])
        looked = self._store.get_many(
            self._table, ids, deadline_ms=min(e.deadline_ms for e in batch)
        )
        vectors = np.asarray(looked.vectors, dtype=np.float32)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        missing = np.add.reduceat((~looked.found).astype(np.int64), starts).tolist()
        degraded = (
            np.add.reduceat(looked.degraded.astype(np.int64), starts).tolist()
            if looked.degraded is not None
            else [0] * len(batch)
        )
        return [
            msgspec.structs.replace(
                e, item_vecs=vectors[s : s + n], missing=m, degraded=e.degraded + d
            )
            for e, s, n, m, d in zip(
                batch, starts.tolist(), counts.tolist(), missing, degraded, strict=True
            )
        ]
