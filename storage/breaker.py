"""A circuit breaker: how a worker keeps answering while its network backend is down or slow.

A lookup that waits for a dead cluster blows every deadline of its micro-batch; one that fails
fast and falls back to zeros still answers on time, marked degraded. So after ``failures``
consecutive failed calls the breaker *opens*: calls are refused at once, without touching the
network, for ``reset_after`` seconds. Then it goes *half-open*: the next call is let through as a
probe (one at a time; the others keep being refused). A probe that succeeds closes the breaker
and normal service resumes by itself; one that fails opens it again for twice as long (up to
``max_reset_after``), so a long outage costs one probe per ``max_reset_after``, not a timeout per
batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class Breaker:
    """Thread-safe; the clock is injectable so tests can step through the states."""

    def __init__(
        self,
        *,
        failures: int = 3,
        reset_after: float = 0.5,
        max_reset_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or reset_after <= 0 or max_reset_after < reset_after:
            raise ValueError(
                "breaker: need failures >= 1 and 0 < reset_after <= max_reset_after, got "
                f"failures={failures} reset_after={reset_after} max_reset_after={max_reset_after}"
            )
        self.threshold = failures
        self.reset_after = reset_after
        self.max_reset_after = max_reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._backoff = reset_after
        self._until = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        with self._lock:
            if self._state == "open" and self._clock() >= self._until:
                return "half_open"
            return self._state

    def allow(self) -> bool:
        """Whether a call may go to the backend now (in half-open state: the one probe)."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open":
                if self._clock() < self._until:
                    return False
                self._state = "half_open"
            if self._probing:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._state = "closed"
            self._failures = 0
            self._backoff = self.reset_after
            self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == "half_open" or self._failures >= self.threshold:
                if self._state == "half_open":
                    self._backoff = min(self._backoff * 2, self.max_reset_after)
                self._state = "open"
                self._until = self._clock() + self._backoff
            self._probing = False
