"""The reconcile loop against a fake observer and actuator, and the observation helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from allocator.decide import AllocatorOptions, Decider
from allocator.errors import ActuatorError, ObserveError
from allocator.history import DAY_S, History, Record
from allocator.observe import (
    Rates,
    TopicOffsets,
    WorkerStats,
    merge,
    parse_metrics,
    quantile_from_buckets,
)
from allocator.policy import ScalingOptions
from allocator.reconcile import Reconciler
from stages import metrics

_PROC, _BATCH = metrics.PROCESSING_NAME, metrics.BATCH_SIZE_NAME
_RESP, _LAT = metrics.RESPONSES_NAME, metrics.REQUEST_LATENCY_NAME
METRICS = f"""
# TYPE {_PROC} histogram
{_PROC}_sum{{pipeline="p",stage="score"}} 2.0
{_PROC}_count{{pipeline="p",stage="score"}} 10.0
{_PROC}_sum{{pipeline="other",stage="score"}} 99.0
# TYPE {_BATCH} histogram
{_BATCH}_sum{{pipeline="p",stage="score"}} 640.0
{_BATCH}_count{{pipeline="p",stage="score"}} 10.0
# TYPE {_RESP} counter
{_RESP}{{pipeline="p",status="ok"}} 600.0
{_RESP}{{pipeline="p",status="shed"}} 40.0
{_RESP}{{pipeline="p",status="expired"}} 7.0
# TYPE {_LAT} histogram
{_LAT}_bucket{{pipeline="p",status="ok",le="0.05"}} 500.0
{_LAT}_bucket{{pipeline="p",status="ok",le="0.1"}} 590.0
{_LAT}_bucket{{pipeline="p",status="ok",le="+Inf"}} 600.0
"""


def test_parse_metrics_sums_one_pipeline() -> None:
    s = parse_metrics(METRICS, pipeline="p", at=1.0)
    assert s.busy_s == {"score": 2.0} and s.events == {"score": 640.0}
    assert (s.shed, s.expired, s.answered) == (40.0, 7.0, 647.0)
    both = merge([s, s])
    assert both.events == {"score": 1280.0} and both.expired == 14.0
    assert dict(both.latency_buckets)[0.1] == 1180.0


def test_quantile_from_bucket_deltas() -> None:
    before = ((0.05, 100.0), (0.1, 100.0), (float("inf"), 100.0))
    after = ((0.05, 190.0), (0.1, 199.0), (float("inf"), 200.0))
    assert quantile_from_buckets(before, after, 0.5) == 0.05
    assert quantile_from_buckets(before, after, 0.99) == 0.1
    assert quantile_from_buckets(after, after, 0.99) is None


def test_rates_from_two_looks() -> None:
    r = Rates()
    first = [TopicOffsets("score", "t", 0.0, (100, 200), (90, -1))]
    r.update(first, WorkerStats(0.0, {"score": 0.0}, {"score": 0.0}))
    second = [TopicOffsets("score", "t", 10.0, (200, 400), (190, 100))]
    (got,), answered = r.update(
        second, WorkerStats(10.0, {"score": 1000.0}, {"score": 2.0}, shed=50.0, expired=20.0)
    )
    assert got.arrival_rate == 30.0 and got.partition_rates == (10.0, 20.0)
    assert got.lag == 310.0 and got.commit_rate == 20.0
    assert got.service_rate == 500.0
    assert (answered.shed_rate, answered.expired_rate, answered.p99_s) == (5.0, 2.0, None)


def test_the_decider_smooths_service_rates_and_keeps_the_last_one() -> None:
    """A noisy measurement moves the estimate by its weight; a look without one keeps it."""
    from allocator.decide import StageInput  # noqa: PLC0415

    opts = AllocatorOptions(
        scaling=ScalingOptions(target_utilisation=1.0, in_flight_s=0.0, lookahead_s=0.0),
        service_smoothing=0.2,
        shedding=False,
    )
    d = Decider(opts)

    def need(rate: float | None, at: float) -> float:
        got = d.decide(at, [StageInput("score", 64, 1, 1200.0, 0.0, rate)])
        return got.stages[0].consumers.need

    assert need(100.0, 0.0) == pytest.approx(12.0)
    assert need(200.0, 10.0) == pytest.approx(10.0)  # 0.8 x 100 + 0.2 x 200 = 120
    assert need(None, 20.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="service_smoothing"):
        AllocatorOptions(service_smoothing=0.0).validate()


@dataclass
class FakeWorld:
    """A broker and an actuator in one: a stage with a fixed arrival rate and service rate."""

    arrival: float = 1000.0
    partitions: int = 16
    running: dict[str, int] = field(default_factory=lambda: {"score": 1})
    scaled: list[tuple[str, int]] = field(default_factory=list)
    t: float = 0.0
    end: int = 0
    fail_observe: bool = False

    def offsets(self) -> list[TopicOffsets]:
        if self.fail_observe:
            raise ObserveError("broker down", retriable=True)
        self.t += 10.0
        self.end += int(self.arrival * 10)
        per = self.end // self.partitions
        return [
            TopicOffsets("score", "t", self.t, (per,) * self.partitions, (per,) * self.partitions)
        ]

    def actual(self, stage: str) -> int:
        return self.running.get(stage, 0)

    def scale(self, stage: str, consumers: int) -> None:
        self.scaled.append((stage, consumers))
        self.running[stage] = consumers

    def endpoints(self) -> list[str]:
        return []

    def stats(self, urls: object) -> WorkerStats:
        n = self.t / 10.0
        return WorkerStats(self.t, {"score": 1000.0 * n}, {"score": 10.0 * n})  # 100/s busy


def reconciler(world: FakeWorld, **kw: object) -> Reconciler:
    opts = AllocatorOptions(scaling=ScalingOptions(target_utilisation=0.5, up_step=0.0))
    return Reconciler(
        "p",
        ("score",),
        world,
        world,
        Decider(opts),
        scrape=world.stats,
        clock=lambda: world.t,
        **kw,  # type: ignore[arg-type]
    )


def test_scales_to_need_and_acts_only_on_the_difference() -> None:
    world = FakeWorld()
    rec = reconciler(world)
    rec.reconcile()  # first look: no rates yet
    look = rec.reconcile()
    assert world.scaled == [("score", 16)]  # 1000/s / (100/s x 0.5) = 20, capped at partitions
    assert look.decisions is not None
    assert look.decisions.stages[0].consumers.reason == "capped_by_partitions"
    assert look.requeue_after == rec.interval_s
    rec.reconcile()
    assert world.scaled == [("score", 16)]  # level-based: nothing to do the second time


def test_dry_run_decides_but_does_not_act() -> None:
    world = FakeWorld()
    rec = reconciler(world, dry_run=True)
    rec.reconcile()
    look = rec.reconcile()
    assert world.scaled == [] and look.acted == ()


def test_a_retriable_observe_failure_is_a_look_not_a_crash() -> None:
    world = FakeWorld(fail_observe=True)
    look = reconciler(world).reconcile()
    assert look.error is not None and look.decisions is None


def test_a_fatal_actuator_failure_stops_the_loop() -> None:
    world = FakeWorld()

    def broken(stage: str, n: int) -> None:
        raise ActuatorError("no such deployment", retriable=False)

    world.scale = broken  # type: ignore[method-assign,assignment]
    rec = reconciler(world)
    rec.reconcile()
    with pytest.raises(ActuatorError):
        rec.reconcile()


def test_a_failing_scrape_skips_the_service_rate_not_the_look() -> None:
    """A worker killed mid-response (http.client.IncompleteRead is no OSError) must not stop
    the loop: the look decides on the offsets and the last measured service rate."""
    world = FakeWorld()
    rec = reconciler(world)
    rec.reconcile()
    rec.reconcile()
    calls = 0

    def flaky(urls: object) -> WorkerStats:
        nonlocal calls
        calls += 1
        raise ValueError("truncated exposition")

    rec.scrape = flaky
    look = rec.reconcile()
    assert calls == 1 and look.error is None and look.decisions is not None
    assert look.rates[0].service_rate == 100.0
    assert look.decisions.stages[0].consumers.desired == 16


@dataclass
class SkewedWorld(FakeWorld):
    """Twelve partitions, a few hot ones (Zipf), and named consumers."""

    names: list[str] = field(default_factory=lambda: ["c0", "c1", "c2"])
    weights: tuple[float, ...] = tuple(1.0 / (i + 1) for i in range(12))

    def offsets(self) -> list[TopicOffsets]:
        self.t += 10.0
        total = sum(self.weights)
        self.end += int(self.arrival * 10)
        ends = tuple(int(self.end * w / total) for w in self.weights)
        return [TopicOffsets("score", "t", self.t, ends, ends)]

    def instances(self, stage: str) -> list[str]:
        return list(self.names)


@dataclass
class PlanLog:
    published: list[dict[str, list[int]]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def __call__(self, stage: str, owners: Mapping[str, list[int]]) -> int:
        self.published.append({k: list(v) for k, v in owners.items()})
        return len(self.published)

    def forget(self, stage: str, instance: str) -> None:
        self.forgotten.append(instance)


def _imbalance(owners: Mapping[str, list[int]], rates: Sequence[float]) -> float:
    loads = [sum(rates[p] for p in parts) for parts in owners.values()]
    return max(loads) / (sum(loads) / len(loads))


def test_named_consumers_get_a_balanced_plan_republished_only_when_needed() -> None:
    world = SkewedWorld(partitions=12, running={"score": 3})
    plans = PlanLog()
    rec = reconciler(world, plans=plans, instances=world.instances)
    rec.reconcile()  # no rates yet: a first plan that only spreads partitions
    assert len(plans.published) == 1 and set(plans.published[0]) == {"c0", "c1", "c2"}
    look = rec.reconcile()  # now the measured rates show the skew: rebalance
    rates = look.rates[0].partition_rates
    assert _imbalance(plans.published[-1], rates) <= 1.2
    assert sorted(p for parts in plans.published[-1].values() for p in parts) == list(range(12))
    before = len(plans.published)
    rec.reconcile()
    rec.reconcile()
    assert len(plans.published) == before  # level-based: a balanced plan stands

    world.names = ["c0", "c2"]  # c1 was killed: its claim is deleted, its share moves
    rec.reconcile()
    assert plans.forgotten == ["c1"]
    assert set(plans.published[-1]) == {"c0", "c2"}
    assert sorted(p for parts in plans.published[-1].values() for p in parts) == list(range(12))


def test_without_named_consumers_no_plan_is_published() -> None:
    world = SkewedWorld(partitions=12, running={"score": 3}, names=[])
    plans = PlanLog()
    rec = reconciler(world, plans=plans, instances=world.instances)
    rec.reconcile()
    rec.reconcile()
    assert plans.published == [] and plans.forgotten == []


def test_history_is_recorded_and_its_wave_scaled_for_ahead_of_the_lag(tmp_path: Path) -> None:
    """Yesterday the rate went from 1,000/s to 10,000/s at 19:05; at 19:04 today, with the
    same 1,000/s, the allocator sizes for the wave before any lag shows it."""
    t0 = datetime(2026, 11, 20, 19, 0, tzinfo=UTC).timestamp()
    history = History(tmp_path)
    history.record(
        [
            Record(t0 - DAY_S + 10, "score", 10, 1000.0, 1000.0, 0.0),
            Record(t0 - DAY_S + 310, "score", 16, 10_000.0, 10_000.0, 0.0),
        ]
    )
    world = FakeWorld(t=t0 + 230, partitions=256)
    rec = reconciler(world, history=history)
    rec.reconcile()
    look = rec.reconcile()  # at 19:04
    assert look.decisions is not None
    d = look.decisions.stages[0].consumers
    assert (d.reason, d.desired) == ("scale_up_forecast", 200)  # 10,000 / (100 x 0.5)
    today = list(history.read("2026-11-20"))[-1]  # the first look had no rates: not recorded
    assert (today.at, today.stage, today.service) == (t0 + 240, "score", 100.0)
    assert today.arrival == pytest.approx(1000.0, rel=0.01)  # whole events per partition
    assert len(list(history.read("2026-11-20"))) == 1


def test_without_history_nothing_is_forecast() -> None:
    world = FakeWorld(partitions=256)
    rec = reconciler(world)
    rec.reconcile()
    look = rec.reconcile()
    assert look.decisions is not None
    assert look.decisions.stages[0].consumers.reason == "scale_up"
