"""Admission control at ingest: which requests are worth starting at all.

Shedding at the door is cheaper than letting a request run four stages and miss its deadline. Two
rules: a request whose remaining budget is below ``min_budget_ms`` cannot be served in time; and
beyond ``rate`` requests/s (a token bucket, tuned at run time by the allocator) the lowest-priority
requests of each batch go first. ``rate = 0`` means unlimited.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt


class Admission:
    """A token bucket whose rate can be changed while stages run (thread-safe)."""

    def __init__(
        self,
        *,
        rate: float = 0.0,
        burst_seconds: float = 0.1,
        min_budget_ms: float = 1.0,
        clock: Callable[[], float],
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._rate = max(0.0, rate)
        self._burst_seconds = burst_seconds
        self.min_budget_ms = min_budget_ms
        self._tokens = self._capacity()
        self._last = clock()

    def _capacity(self) -> float:
        return max(1.0, self._rate * self._burst_seconds)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the limit (requests/s; 0 for none); called by the allocator's shedding loop."""
        with self._lock:
            self._rate = max(0.0, rate)
            self._tokens = min(self._tokens, self._capacity())

    def admit(
        self, priority: npt.NDArray[np.int64], budget_ms: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Return (admitted, too_late) masks for one batch.

        Among requests with enough budget, the highest priorities take the available tokens;
        ties keep arrival order.
        """
        too_late = budget_ms < self.min_budget_ms
        admitted = ~too_late
        with self._lock:
            if self._rate <= 0.0:
                return admitted, too_late
            now = self._clock()
            # A wall clock may step back; that must not take tokens away (nor go negative).
            elapsed = max(0.0, now - self._last)
            self._tokens = min(self._capacity(), self._tokens + elapsed * self._rate)
            self._last = now
            candidates = np.flatnonzero(admitted)
            allowed = int(min(len(candidates), self._tokens))
            self._tokens -= allowed
        if allowed < len(candidates):
            order = candidates[np.argsort(-priority[candidates], kind="stable")]
            admitted = np.zeros_like(admitted)
            admitted[order[:allowed]] = True
        return admitted, too_late
