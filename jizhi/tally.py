"""Counting answers the way a client would: exactly once per request, with latency percentiles.

Shared by `jizhi demo` and the Kafka load generator so both print the same summary fields.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from stages.events import DeadLetter, Response


class Tally:
    """Thread-safe record of every answer and dead letter seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self._status: Counter[str] = Counter()
        self._latency: list[float] = []
        self._recent: list[tuple[float, float]] = []
        self.responses: list[Response] = []
        self.keep_responses = False
        self.dead_lettered = 0
        self.duplicates = 0
        self.degraded = 0  # first answers scored with a fallback for some store lookup
        self.first_answer: float | None = None
        self.last_answer: float | None = None

    def add(self, responses: Sequence[Response]) -> None:
        now = time.monotonic()
        with self._lock:
            if self.first_answer is None:
                self.first_answer = now
            self.last_answer = now
            for r in responses:
                n = self._seen.get(r.request_id, 0)
                self._seen[r.request_id] = n + 1
                if n:
                    self.duplicates += 1
                    continue
                self._status[r.status] += 1
                self.degraded += r.degraded
                self._latency.append(r.latency_ms)
                self._recent.append((now, r.latency_ms))
            if self.keep_responses:
                self.responses.extend(responses)

    def add_dead(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            self.dead_lettered += len(letters)

    @property
    def answered(self) -> int:
        return len(self._seen)

    def answer_count(self, request_id: str) -> int:
        return self._seen.get(request_id, 0)

    def recent_p99(self, window_s: float = 5.0) -> float:
        """p99 latency (ms) of answers in the last ``window_s`` seconds, for the progress line."""
        cutoff = time.monotonic() - window_s
        with self._lock:
            self._recent = [x for x in self._recent if x[0] >= cutoff]
            values = [lat for _, lat in self._recent]
        return float(np.percentile(values, 99)) if values else 0.0

    def summary(self, requests: int, elapsed_s: float, **extra: Any) -> dict[str, Any]:
        """The summary every load generator reports (the demo's ``--summary-json``)."""
        with self._lock:
            lat = np.asarray(self._latency, dtype=np.float64)
            status = dict(self._status)
        pct: dict[str, float | None] = (
            {
                p: round(float(np.percentile(lat, q)), 3)
                for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
            }
            if len(lat)
            else {"p50": None, "p95": None, "p99": None}
        )
        if len(lat):
            pct["max"] = round(float(lat.max()), 3)
            pct["mean"] = round(float(lat.mean()), 3)
        answered = len(self._seen)
        return {
            "requests": requests,
            "answered": answered,
            "ok": status.get("ok", 0),
            "expired": status.get("expired", 0),
            "shed": status.get("shed", 0),
            "invalid": status.get("invalid", 0),
            "duplicate": status.get("duplicate", 0),  # a repeated request_id, answered so
            "dead_lettered": self.dead_lettered,
            "degraded": self.degraded,
            "duplicates": self.duplicates,
            "unanswered": max(0, requests - answered),
            "elapsed_s": round(elapsed_s, 3),
            "throughput_rps": round(answered / elapsed_s, 1) if elapsed_s > 0 else 0.0,
            "latency_ms": pct,
            **extra,
        }
