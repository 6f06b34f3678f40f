"""features: the user side of the model input.

A request's user vector is the user's embedding (from the store, one batch lookup per micro-batch)
followed by its real-time context (hour, device, ...) folded into ``context_dim`` slots by feature
hashing, so new context keys need no schema change. crc32 keeps the hash stable across processes,
which Python's salted ``hash`` is not.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from stages.events import ContextValue, DeadLetter, Event
from stages.stage import BaseStage, Result
from storage import Store


class ContextHasher:
    """Feature hashing of ``{key: value}`` pairs; strings are one-hot, numbers keep their value."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._slots: dict[tuple[str, str | None], tuple[int, float]] = {}

    def _slot(self, key: str, value: ContextValue) -> tuple[int, float]:
        if isinstance(value, str):
            cache_key: tuple[str, str | None] = (key, value)
            hit = self._slots.get(cache_key)
            if hit is None:
                h = zlib.crc32(f"{key}={value}".encode())
                hit = (h % self.dim, 1.0 if (h >> 31) & 1 else -1.0)
                if len(self._slots) < 1_000_000:
                    self._slots[cache_key] = hit
            return hit
        base = self._slots.get((key, None))
        if base is None:
            h = zlib.crc32(key.encode())
            base = (h % self.dim, 1.0 if (h >> 31) & 1 else -1.0)
            self._slots[(key, None)] = base
        return base[0], base[1] * float(value)

    def transform(self, contexts: Sequence[dict[str, ContextValue]]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(contexts), self.dim), dtype=np.float32)
        if self.dim == 0:
            return out
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for r, ctx in enumerate(contexts):
            for key, value in ctx.items():
                c, v = self._slot(key, value)
                rows.append(r)
                cols.append(c)
                vals.append(v)
        if rows:
            np.add.at(out, (np.array(rows), np.array(cols)), np.array(vals, dtype=np.float32))
        return out


class Features(BaseStage):
    """Attaches ``user_vec`` = user embedding ‖ hashed context to every event."""

    name = "features"

    def __init__(self, store: Store, *, table: str = "users", context_dim: int = 16) -> None:
        self._store = store
        self._table = table
        self._hasher = ContextHasher(context_dim)

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        if not batch:
            return []
        ids = np.fromiter((e.user_id for e in batch), dtype=np.int64, count=len(batch))
        looked = self._store.get_many(
            self._table, ids, deadline_ms=min(e.deadline_ms for e in batch)
        )
        ctx = self._hasher.transform([e.context for e in batch])
        user = np.concatenate([np.asarray(looked.vectors, dtype=np.float32), ctx], axis=1)
        if looked.degraded is None or not looked.degraded.any():
            return [msgspec.structs.replace(e, user_vec=user[i]) for i, e in enumerate(batch)]
        flags = looked.degraded.tolist()
        return [
            msgspec.structs.replace(e, user_vec=user[i], degraded=e.degraded + int(flags[i]))
            for i, e in enumerate(batch)
        ]


__all__ = ["ContextHasher", "DeadLetter", "Features"]
