"""Paced traffic whose every answer is timed, and the trends read from it.

The chaos loop and the soak both need more than `jizhi publish`'s end-of-run summary: when each
request was sent and first answered (to say how long a fault held answers up), latency over time
(to fit a p99 trend) and the workers' memory over time. `jizhi.publish` stays the user-facing
load generator; this is its instrumented sibling for runs that last as long as they are asked to.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jizhi.client import Client
from jizhi.synth import RequestEncoder, Workload, WorldSpec, publish_chunk
from stages.events import DeadLetter, Response
from stages.runtime.kafka import ensure_pipeline_topics

# One small world for every run: these runs measure delivery and trends, not model quality.
WORLD = WorldSpec(users=500, items=20_000, dim=16, seed=7)


@dataclass(frozen=True, kw_only=True)
class TrafficOptions:
    bootstrap: str
    pipeline: str
    rate: float
    seconds: float
    world: WorldSpec = WORLD
    candidates: int = 50
    timeout_ms: float = 60_000.0
    """Long: under faults a request may wait seconds for a new leader, and an `expired` answer
    would hide whether the pipeline delivered it."""
    partitions: int = 4
    replication: int = 1
    seed: int = 7


@dataclass
class TrafficReport:
    published: int
    answered: int
    lost: int
    duplicates: int
    dead_lettered: int
    delivery_errors: int
    status: dict[str, int]
    sent_at: list[float] = field(repr=False)
    """Monotonic send time of request i."""
    answered_at: dict[int, float] = field(repr=False)
    """Monotonic time request i was first answered."""
    latencies: list[tuple[float, float]] = field(repr=False)
    """(monotonic answer time, client-side latency ms) of every first answer."""

    def summary(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "answered": self.answered,
            "lost": self.lost,
            "duplicated": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "delivery_errors": self.delivery_errors,
            "status": self.status,
        }

    def drained_after(self, at: float) -> float | None:
        """Seconds from ``at`` until every request sent before it had an answer: how long a
        fault at ``at`` held up work already in the pipeline (None: some never were)."""
        last = at
        for i, sent in enumerate(self.sent_at):
            if sent >= at:
                break
            done = self.answered_at.get(i)
            if done is None:
                return None
            last = max(last, done)
        return last - at

    def p99_series(self, window_s: float) -> list[tuple[float, float]]:
        """(window midpoint in seconds from the first answer, p99 ms) per window."""
        if not self.latencies:
            return []
        t = np.asarray([x[0] for x in self.latencies])
        lat = np.asarray([x[1] for x in self.latencies])
        t = t - t.min()
        out = []
        for start in np.arange(0.0, float(t.max()) + 1e-9, window_s):
            sel = lat[(t >= start) & (t < start + window_s)]
            if len(sel) >= 20:  # a p99 of a handful of answers is noise
                out.append((float(start + window_s / 2), float(np.percentile(sel, 99))))
        return out


class Traffic:
    """Open-loop requests at ``rate`` in a thread of their own, until ``seconds`` or ``stop``."""

    def __init__(self, opts: TrafficOptions) -> None:
        self._o = opts
        ensure_pipeline_topics(
            {"bootstrap.servers": opts.bootstrap},
            opts.pipeline,
            partitions=opts.partitions,
            replication=opts.replication,
        )
        self._lock = threading.Lock()
        self._first: dict[int, float] = {}
        self._latencies: list[tuple[float, float]] = []
        self._status: Counter[str] = Counter()
        self._duplicates = 0
        self._dead = 0
        self._sent_at: list[float] = []
        self._stop = threading.Event()
        self._prefix = f"{opts.pipeline}-{time.monotonic_ns() % 10**9}-"
        # Idempotent produce: a retry after a broker dies must not put a request in twice, or
        # the count of duplicate answers would measure the client instead of the pipeline.
        self._client = Client(
            opts.bootstrap,
            opts.pipeline,
            conf={"enable.idempotence": True, "log_level": 2},
            on_responses=self._on_responses,
            on_dead=self._on_dead,
        )
        self._thread: threading.Thread | None = None

    def _on_responses(self, batch: list[Response]) -> None:
        now = time.monotonic()
        now_ms = time.time() * 1000.0
        with self._lock:
            for r in batch:
                if not r.request_id.startswith(self._prefix):
                    continue
                i = int(r.request_id.rsplit("-", 1)[1])
                if i in self._first:
                    self._duplicates += 1
                    continue
                self._first[i] = now
                self._status[r.status] += 1
                self._latencies.append((now, now_ms - r.created_at_ms))

    def _on_dead(self, batch: list[DeadLetter]) -> None:
        with self._lock:
            self._dead += len(batch)

    def ready(self, requests: int = 50, timeout: float = 120.0) -> None:
        """Blocks until a few requests went all the way through: every stage has a worker."""
        probe = Workload(requests, candidates=self._o.candidates, seed=99)
        enc = RequestEncoder(probe)
        futures = [
            self._client.submit(enc.encode(f"ready-{self._prefix}{rid}", user, cands, None))
            for b in probe.batches(self._o.world)
            for rid, user, cands in zip(b.ids, b.users.tolist(), b.candidates.tolist(), strict=True)
        ]
        self._client.flush(30.0)
        _, pending = wait(futures, timeout=timeout)
        if pending:
            raise TimeoutError(f"{len(pending)} of {requests} readiness requests unanswered")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        o = self._o
        total = max(1, int(o.rate * o.seconds))
        workload = Workload(total, candidates=o.candidates, timeout_ms=o.timeout_ms, seed=o.seed)
        enc = RequestEncoder(workload)
        start_wall, start = time.time(), time.monotonic()
        sent = 0
        for b in workload.batches(o.world, chunk=publish_chunk(o.rate)):
            if self._stop.is_set():
                break
            delay = start + sent / o.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent_ms = (start_wall + sent / o.rate) * 1000.0
            for user, cands in zip(b.users.tolist(), b.candidates.tolist(), strict=True):
                payload = enc.encode(f"{self._prefix}{sent}", user, cands, sent_ms)
                with self._lock:
                    self._sent_at.append(time.monotonic())
                self._client.publish(payload, str(user).encode())
                sent += 1

    def stop(self) -> None:
        self._stop.set()

    def sending(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def unanswered(self) -> int:
        with self._lock:
            return len(self._sent_at) - len(self._first)

    def finish(
        self, answer_timeout_s: float, tick: Callable[[], None] | None = None
    ) -> TrafficReport:
        """Stops sending (if still), waits up to ``answer_timeout_s`` for the last answers,
        calling ``tick`` meanwhile (a supervisor must go on restarting what dies)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._client.flush(30.0)
        end = time.monotonic() + answer_timeout_s
        while self.unanswered() > 0 and time.monotonic() < end:
            if tick is not None:
                tick()
            time.sleep(0.1)
        time.sleep(1.0)  # a late second answer is a duplicate too: give it a moment
        self._client.close()
        with self._lock:
            published = len(self._sent_at)
            answered = len(self._first)
            return TrafficReport(
                published=published,
                answered=answered,
                lost=published - answered,
                duplicates=self._duplicates,
                dead_lettered=self._dead,
                delivery_errors=self._client.delivery_errors,
                status=dict(self._status),
                sent_at=list(self._sent_at),
                answered_at=dict(self._first),
                latencies=list(self._latencies),
            )


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points: a trend that one noisy sample cannot fake."""
    if len(points) < 3:
        return 0.0
    x = np.asarray([p[0] for p in points])
    y = np.asarray([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])
