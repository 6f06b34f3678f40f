"""Two services under one core budget, against fake brokers and actuators: the higher-priority
one is sized as it asks, the lower one gets what is left and is shed at its edge."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from allocator.decide import AllocatorOptions, Decider
from allocator.errors import ObserveError
from allocator.fleet import Fleet, Service
from allocator.observe import TopicOffsets, WorkerStats
from allocator.policy import ScalingOptions
from allocator.reconcile import ADMIT_NOTHING, Reconciler

STAGES = ("ingest", "work")
RATE = {"ingest": 10_000.0, "work": 100.0}  # events per busy second of one consumer


@dataclass
class Clock:
    t: float = 1_000.0


@dataclass
class Service1:
    """One service's broker, workers and control topic: everything offered reaches every stage
    (what is shed still passes ingest), 10 s between looks."""

    clock: Clock
    offered: float
    running: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 1))
    admitted: list[float] = field(default_factory=list)
    scaled: list[tuple[str, int]] = field(default_factory=list)
    ends: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    fail: bool = False

    def offsets(self) -> list[TopicOffsets]:
        if self.fail:
            raise ObserveError("broker away", retriable=True)
        limit = self.admitted[-1] if self.admitted and self.admitted[-1] > 0 else self.offered
        for st in STAGES:
            rate = self.offered if st == "ingest" else min(self.offered, limit)
            self.ends[st] += int(rate * 10 / 8)
        return [  # eight partitions, each at its end: no lag
            TopicOffsets(st, st, self.clock.t, (self.ends[st],) * 8, (self.ends[st],) * 8)
            for st in STAGES
        ]

    def actual(self, stage: str) -> int:
        return self.running[stage]

    def scale(self, stage: str, n: int) -> None:
        self.scaled.append((stage, n))
        self.running[stage] = n

    def endpoints(self) -> list[str]:
        return []

    def stats(self, urls: object) -> WorkerStats:
        n = self.clock.t / 10.0
        return WorkerStats(self.clock.t, {s: RATE[s] * n for s in STAGES}, dict.fromkeys(STAGES, n))


def service(name: str, priority: int, world: Service1, clock: Clock) -> Service:
    opts = AllocatorOptions(
        scaling=ScalingOptions(
            target_utilisation=0.75, down_cooldown_s=0.0, down_window_s=0.0, lookahead_s=0.0
        ),
        shedding=False,
    )
    rec = Reconciler(
        name,
        STAGES,
        world,
        world,
        Decider(opts),
        scrape=world.stats,
        publish_admission=world.admitted.append,
        clock=lambda: clock.t,
    )
    return Service(rec, priority)


def looks(fleet: Fleet, clock: Clock, n: int) -> None:
    for _ in range(n):
        clock.t += 10.0
        fleet.reconcile()


def test_the_lower_priority_service_gets_what_is_left_and_is_shed() -> None:
    clock = Clock()
    hi, lo = Service1(clock, 120.0), Service1(clock, 120.0)
    fleet = Fleet([service("lo", 1, lo, clock), service("hi", 9, hi, clock)], budget=5)
    looks(fleet, clock, 4)
    # each needs ingest 1 + work ceil(120 / 75) = 2: 6 > 5, so lo's work gets one consumer
    assert hi.running == {"ingest": 1, "work": 2}
    assert lo.running == {"ingest": 1, "work": 1}
    assert lo.admitted and lo.admitted[-1] == pytest.approx(75.0)  # 1 x 100/s x 0.75
    assert hi.admitted == []
    clock.t += 10.0
    last = fleet.reconcile()
    assert last.split is not None and last.split.granted <= 5
    assert (last.split.of("hi").reason, last.split.of("lo").reason) == ("within_budget", "short")
    assert last.looks["lo"].admission == pytest.approx(75.0)
    n = len(lo.admitted)
    looks(fleet, clock, 3)
    assert len(lo.admitted) == n  # level-based: the same limit is not republished

    # the high one's load rises: lo's later stage goes, its edge alone sheds everything
    hi.offered = 200.0
    looks(fleet, clock, 3)
    assert hi.running == {"ingest": 1, "work": 3}
    assert lo.running == {"ingest": 1, "work": 0}
    assert lo.admitted[-1] == ADMIT_NOTHING  # "admit nothing": 0 would mean unlimited
    # more still: nothing is left for lo at all
    hi.offered = 300.0
    looks(fleet, clock, 2)
    assert hi.running == {"ingest": 1, "work": 4}
    assert lo.running == {"ingest": 0, "work": 0}
    # and back: lo is whole again and its limit lifted (0 = unlimited)
    hi.offered = 60.0
    looks(fleet, clock, 3)
    assert lo.running == {"ingest": 1, "work": 2}
    assert lo.admitted[-1] == 0.0
    assert sum(hi.running.values()) + sum(lo.running.values()) <= 5


def test_without_a_budget_each_service_is_its_own_reconciler() -> None:
    clock = Clock()
    hi, lo = Service1(clock, 300.0), Service1(clock, 300.0)
    fleet = Fleet([service("lo", 1, lo, clock), service("hi", 9, hi, clock)])
    looks(fleet, clock, 3)
    assert hi.running == lo.running == {"ingest": 1, "work": 4}
    assert hi.admitted == lo.admitted == []


def test_a_service_whose_look_fails_keeps_its_consumers_off_the_budget() -> None:
    clock = Clock()
    hi, lo = Service1(clock, 120.0), Service1(clock, 120.0)
    fleet = Fleet([service("lo", 1, lo, clock), service("hi", 9, hi, clock)], budget=5)
    looks(fleet, clock, 3)
    hi.fail = True
    clock.t += 10.0
    got = fleet.reconcile()
    assert got.looks["hi"].error is not None
    assert lo.running == {"ingest": 1, "work": 1}  # hi's 3 are still held for it
    with pytest.raises(ValueError, match="distinct"):
        Fleet([service("a", 1, lo, clock), service("a", 2, hi, clock)])
