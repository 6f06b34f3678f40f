"""Observe: what the allocator reads each look, and the maths that turns looks into rates.

Two sources, both re-read on every look (the loop is level-based, it trusts no cached state):

- Kafka (`allocator.observe_kafka.KafkaObserver`): per stage and partition, the input topic's end
  offset and the stage group's committed offset. Lag is their difference; arrival and commit
  rates are their changes between two looks (`Rates`).
- The workers' Prometheus endpoints (`scrape`): events finished and busy seconds per stage (so a
  consumer's service rate while busy, the "true processing rate", which a lag-only rule cannot
  see), batch counts, shed answers, and the end-to-end latency histogram, whose bucket changes
  between two looks give the p99 of the last interval.

This module imports no Kafka client: the simulator and the tests replay numbers through it.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

from stages import metrics

# -- what one look sees -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicOffsets:
    """One stage's input topic at one instant: end and committed offset per partition."""

    stage: str
    topic: str
    at: float
    end: tuple[int, ...]
    committed: tuple[int, ...]
    """-1 where the group has committed nothing (lag then counts from the log start, 0)."""

    @property
    def partitions(self) -> int:
        return len(self.end)

    def lags(self) -> list[int]:
        return [max(0, e - max(c, 0)) for e, c in zip(self.end, self.committed, strict=True)]


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Cumulative counters summed over the scraped workers, per stage."""

    at: float
    events: Mapping[str, float] = field(default_factory=dict)
    busy_s: Mapping[str, float] = field(default_factory=dict)
    batches: Mapping[str, float] = field(default_factory=dict)
    shed: float = 0.0
    answered: float = 0.0
    latency_buckets: tuple[tuple[float, float], ...] = ()
    """(upper bound in s, cumulative count) of `stages.metrics.REQUEST_LATENCY`, status ok."""
    expired: float = 0.0
    """Requests answered 'expired': their deadline passed inside the pipeline."""


class Observer(Protocol):
    def offsets(self) -> list[TopicOffsets]: ...


# -- worker metrics -----------------------------------------------------------------------------

# The series read, by the names the workers export them under.
_BUSY = f"{metrics.PROCESSING_NAME}_sum"
_BATCHES = f"{metrics.PROCESSING_NAME}_count"
_EVENTS = f"{metrics.BATCH_SIZE_NAME}_sum"
_ANSWERED = metrics.RESPONSES_NAME
_LATENCY = f"{metrics.REQUEST_LATENCY_NAME}_bucket"


def parse_metrics(text: str, *, pipeline: str, at: float) -> WorkerStats:
    """Sum one or more workers' exposition text into per-stage counters."""
    events: dict[str, float] = {}
    busy: dict[str, float] = {}
    batches: dict[str, float] = {}
    buckets: dict[float, float] = {}
    shed = answered = expired = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("pipeline") != pipeline:
                continue
            stage = s.labels.get("stage", "")
            if s.name == _BUSY:
                busy[stage] = busy.get(stage, 0.0) + s.value
            elif s.name == _BATCHES:
                batches[stage] = batches.get(stage, 0.0) + s.value
            elif s.name == _EVENTS:
                events[stage] = events.get(stage, 0.0) + s.value
            elif s.name == _ANSWERED:
                answered += s.value
                if s.labels.get("status") == "shed":
                    shed += s.value
                elif s.labels.get("status") == "expired":
                    expired += s.value
            elif s.name == _LATENCY and s.labels.get("status") == "ok":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return WorkerStats(
        at, events, busy, batches, shed, answered, tuple(sorted(buckets.items())), expired
    )


def merge(stats: Sequence[WorkerStats]) -> WorkerStats:
    """Counters of several scrapes (one per worker) added up."""

    def add(maps: Iterable[Mapping[str, float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in maps:
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + v
        return out

    buckets: dict[float, float] = {}
    for s in stats:
        for le, v in s.latency_buckets:
            buckets[le] = buckets.get(le, 0.0) + v
    return WorkerStats(
        max((s.at for s in stats), default=time.time()),
        add(s.events for s in stats),
        add(s.busy_s for s in stats),
        add(s.batches for s in stats),
        sum(s.shed for s in stats),
        sum(s.answered for s in stats),
        tuple(sorted(buckets.items())),
        sum(s.expired for s in stats),
    )


def scrape(urls: Sequence[str], *, pipeline: str, timeout: float = 2.0) -> WorkerStats:
    """Read every worker's /metrics; an unreachable worker (starting, stopping) is skipped:
    its counters come back with it, and rates are computed per worker-set change anyway."""
    got = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                text = resp.read().decode("utf-8", "replace")
        except OSError:
            continue
        got.append(parse_metrics(text, pipeline=pipeline, at=time.time()))
    return merge(got)


def quantile_from_buckets(
    before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]], q: float
) -> float | None:
    """The ``q`` quantile of what was observed between two cumulative histogram snapshots
    (upper bound of the bucket holding it); None when nothing was observed."""
    prev = dict(before)
    deltas = [(le, max(0.0, c - prev.get(le, 0.0))) for le, c in after]
    if not deltas:
        return None
    total = deltas[-1][1]
    if total <= 0:
        return None
    for le, c in deltas:
        if c >= q * total:
            return le
    return deltas[-1][0]


# -- rates between two looks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageRates:
    stage: str
    partitions: int
    lag: float
    arrival_rate: float
    """Events/s appended to the input topic (end offsets' change)."""
    commit_rate: float
    """Events/s the group committed (its throughput)."""
    partition_rates: tuple[float, ...]
    service_rate: float | None
    """One consumer's events per busy second (from worker metrics), None if unmeasured."""


@dataclass(frozen=True, slots=True)
class PipelineRates:
    """What the workers answered between two looks, over the whole pipeline."""

    p99_s: float | None = None
    """p99 end-to-end latency of 'ok' answers; None when nothing was answered or not scraped."""
    shed_rate: float = 0.0
    expired_rate: float = 0.0
    """Deadline misses: requests/s answered 'expired'."""


class Rates:
    """Turns successive looks into rates; remembers only the previous look."""

    def __init__(self) -> None:
        self._prev: dict[str, TopicOffsets] = {}
        self._prev_stats: WorkerStats | None = None
        self._service: dict[str, float] = {}

    def update(
        self, offsets: Sequence[TopicOffsets], stats: WorkerStats | None
    ) -> tuple[list[StageRates], PipelineRates]:
        """Per-stage rates, and what the pipeline answered, since the last look."""
        out = []
        prev_stats = self._prev_stats
        for o in offsets:
            before = self._prev.get(o.stage)
            arrival = commit = 0.0
            prates: list[float] = [0.0] * o.partitions
            if before is not None and o.at > before.at and before.partitions <= o.partitions:
                dt = o.at - before.at
                for p in range(before.partitions):
                    prates[p] = max(0, o.end[p] - before.end[p]) / dt
                arrival = sum(prates)
                commit = (
                    sum(
                        max(0, c - max(b, 0))
                        for c, b in zip(o.committed, before.committed, strict=False)
                        if c >= 0
                    )
                    / dt
                )
            self._prev[o.stage] = o
            if stats is not None and prev_stats is not None:
                de = stats.events.get(o.stage, 0.0) - prev_stats.events.get(o.stage, 0.0)
                db = stats.busy_s.get(o.stage, 0.0) - prev_stats.busy_s.get(o.stage, 0.0)
                if de > 0 and db > 0:
                    # This interval's measurement, raw: the decider smooths it (for the
                    # simulator's sake too); an idle interval keeps the last one.
                    self._service[o.stage] = de / db
            out.append(
                StageRates(
                    o.stage,
                    o.partitions,
                    float(sum(o.lags())),
                    arrival,
                    commit,
                    tuple(prates),
                    self._service.get(o.stage),
                )
            )
        pipeline = PipelineRates()
        if stats is not None and prev_stats is not None and stats.at > prev_stats.at:
            p99 = quantile_from_buckets(prev_stats.latency_buckets, stats.latency_buckets, 0.99)
            span = stats.at - prev_stats.at
            pipeline = PipelineRates(
                None if p99 is None or math.isinf(p99) else p99,
                max(0.0, stats.shed - prev_stats.shed) / span,
                max(0.0, stats.expired - prev_stats.expired) / span,
            )
        if stats is not None:
            self._prev_stats = stats
        return out, pipeline
