"""ResultCache: model outputs that repeat, kept so they are not computed again (JiZhi's reuse).

The first use is the user tower: its output depends only on the model and the user's input row
(embedding ‖ hashed context), and the same user comes back many times while that row holds. So
outputs are cached per (user, model version), behind a TTL.

Why it is keyed as it is:

- **The input row is part of the key.** The user tower reads the request's context too (device,
  hour), so "the same user" is not enough: two requests of one user with different contexts
  have different outputs. The key mixes the user id with a 64-bit fingerprint of the input row
  (a multiply-add hash over its bytes, one whole-array pass), so a hit is the same user *and* the
  same input, and correct by construction rather than by TTL. The TTL bounds memory held by
  rows no longer asked for, and staleness if a caller's inputs ever stop being the whole story.
- **The model version clears it.** A worker scores with one model at a time; a new version
  empties the cache instead of letting two versions share its budget.
- **Storage is a LocalCache segment**: the same vectorized, byte-bounded, frequency-admitted
  structure as the embeddings, so frequent users stay and one-off users do not churn it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from storage.cache import LocalCache, _mix
from storage.store import Ids, TableSpec

F32 = npt.NDArray[np.float32]
_POSITIVE = np.uint64(0x7FFF_FFFF_FFFF_FFFF)


class ResultCache:
    """Outputs of ``dim`` float32 per (user, input row, model version), at most ``capacity_bytes``.

    ``ttl`` seconds after it was computed a cached output counts as a miss. Thread-safe.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        dim: int,
        ttl: float = 60.0,
        name: str = "user_tower",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if dim < 1 or ttl <= 0:
            raise ValueError(f"result cache {name!r}: need dim >= 1 and ttl > 0, got {dim}, {ttl}")
        self.spec = TableSpec(name, dim, "float32")
        self.cache = LocalCache(capacity_bytes, ttl=ttl, clock=clock)
        self._version: str | None = None
        self._weights: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._lock = threading.Lock()
        self.computed = 0
        self.reused = 0

    def keys(self, user_ids: Ids, inputs: npt.NDArray[Any]) -> Ids:
        """One non-negative int64 key per (user, input row)."""
        words = np.ascontiguousarray(inputs, dtype=np.float32).view(np.uint32)
        if self._weights.shape[0] != words.shape[1]:
            rng = np.random.default_rng(0x5EED)
            w = rng.integers(1, 2**63, size=words.shape[1], dtype=np.uint64)
            self._weights = np.bitwise_or(w, np.uint64(1))  # odd: each word always matters
        fingerprint = (words.astype(np.uint64) * self._weights).sum(axis=1, dtype=np.uint64)
        mixed = _mix(fingerprint.view(np.int64) ^ user_ids)
        out: Ids = (mixed & _POSITIVE).view(np.int64)
        return out

    def _check_version(self, version: str) -> None:
        with self._lock:
            if version != self._version:
                self.cache.clear()
                self._version = version

    def get_or_compute(
        self,
        version: str,
        user_ids: Ids,
        inputs: F32,
        compute: Callable[[F32], F32],
    ) -> F32:
        """Outputs for every row: cached ones reused, the others computed in one call and kept."""
        self._check_version(version)
        keys = self.keys(user_ids, inputs)
        looked = self.cache.get(self.spec, keys)
        out: F32 = np.asarray(looked.vectors, dtype=np.float32)
        missing = np.flatnonzero(~looked.found)
        if missing.shape[0]:
            # Rows of one batch that share a key (same user, same context) are computed once.
            uniq, first, back = np.unique(keys[missing], return_index=True, return_inverse=True)
            fresh = compute(inputs[missing[first]])
            out[missing] = fresh[back]
            self.cache.offer(self.spec, uniq, fresh)
            self.computed += uniq.shape[0]
        self.reused += keys.shape[0] - int(np.unique(keys[missing]).shape[0])
        return out

    def hit_ratio(self) -> float:
        """Share of rows served from the cache since it was made; 0.0 before any."""
        total = self.reused + self.computed
        return self.reused / total if total else 0.0
