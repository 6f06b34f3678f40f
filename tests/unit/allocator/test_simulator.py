"""Sanity of the fluid model, and the real policies on small traces."""

from __future__ import annotations

import numpy as np
import pytest

from allocator.contenders import Jizhi, Keda, StaticPeak
from allocator.simulator import PipelineModel, StageModel, simulate
from allocator.traces import KEY_GROUPS, Trace, diurnal, flash

STAGES = (StageModel("a", 1000.0, 0.005), StageModel("b", 500.0, 0.01))


def flat(rate: float, steps: int = 360, keys: np.ndarray | None = None) -> Trace:
    w = keys if keys is not None else np.full(KEY_GROUPS, 1.0 / KEY_GROUPS)
    r = np.full(steps, rate)
    return Trace("flat", "constant", 10.0, r, r.copy(), w)


def test_enough_consumers_answer_everything_in_time() -> None:
    r = simulate(flat(2000.0), PipelineModel(STAGES, partitions=64), StaticPeak(utilisation=0.5))
    assert r.attainment == pytest.approx(1.0)
    assert r.consumer_seconds == pytest.approx((4 + 8) * 3600.0)
    assert r.scale_events == 0


def test_too_few_consumers_miss_deadlines() -> None:
    r = simulate(flat(2000.0), PipelineModel(STAGES, partitions=64), StaticPeak(utilisation=1.5))
    assert r.attainment < 0.5
    assert 0.0 <= r.in_time <= r.offered


def test_a_slow_startup_costs_attainment() -> None:
    fast = simulate(flash(peak=5000.0, hours=6), PipelineModel(STAGES, partitions=64), Jizhi())
    slow = simulate(
        flash(peak=5000.0, hours=6), PipelineModel(STAGES, partitions=64, startup_s=120), Jizhi()
    )
    assert slow.attainment < fast.attainment


def test_partitions_must_be_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        simulate(flat(10.0), PipelineModel(STAGES, partitions=6), StaticPeak())


def test_jizhi_grows_partitions_when_consumers_need_them() -> None:
    r = simulate(flat(20_000.0), PipelineModel(STAGES, partitions=8), Jizhi())
    assert r.max_partitions > 8


def test_on_a_day_jizhi_keeps_deadlines_with_fewer_consumer_seconds() -> None:
    """The headline on a small day: same attainment, fewer consumer-seconds than static peak and
    than KEDA at a threshold that also keeps the deadline."""
    trace = diurnal(peak=20_000.0, hours=24, skew=True, seed=3)
    model = PipelineModel(STAGES, partitions=256)
    static = simulate(trace, model, StaticPeak(utilisation=0.5))
    keda = simulate(trace, model, Keda(utilisation=0.4))
    ours = simulate(trace, model, Jizhi())
    assert ours.attainment >= 0.999
    assert ours.consumer_seconds <= 0.7 * static.consumer_seconds
    assert ours.consumer_seconds <= 0.85 * keda.consumer_seconds


def test_jizhi_forecasts_from_the_previous_day_recorded_as_the_loop_records_it() -> None:
    """The contender writes the trace's previous day into a `History` on disk and reads its
    forecast back through `History.forecast`: at 18:00 of an evening trace that is what the
    recorded day had around 18:00 (5-minute buckets of the 5-minute smoothed history)."""
    from allocator.contenders import SIM_DAY  # noqa: PLC0415

    trace = diurnal(peak=10_000.0, hours=2.0, start_h=17.0, seed=4)
    j = Jizhi()
    j.start(PipelineModel(STAGES, partitions=64), trace)
    assert j._history is not None
    i = 360  # 18:00, one hour in (10 s steps)
    then, ahead = j._history.forecast("ingest", SIM_DAY + trace.start_s + i * trace.dt, 120.0)
    assert then is not None
    assert then == pytest.approx(float(trace.history[i : i + 30].mean()), rel=0.02)
    assert ahead is not None and ahead >= then * 0.99  # the evening still climbs at 18:00
    off = Jizhi(forecast=False)
    off.start(PipelineModel(STAGES, partitions=64), trace)
    assert off._history is None  # no history, no forecast: a purely reactive allocator


def test_two_services_under_a_short_budget_the_high_one_keeps_its_deadline() -> None:
    """hi (priority 10) rides a 1,500 -> 4,000 req/s wave; lo (priority 1) offers 3,000 req/s
    throughout. Together they need 32 consumers at hi's peak; the budget is 24. hi keeps
    >= 99.9% in time, lo gives up consumers and is shed at its edge while hi peaks, and what lo
    admits is still answered in time; the fleet never holds more than the budget."""
    from allocator.contenders import JizhiFleet  # noqa: PLC0415
    from allocator.simulator import FleetResult, Member, simulate_fleet  # noqa: PLC0415

    steps = 1080  # 3 h of 10 s
    t = np.arange(steps) * 10.0
    rise = np.clip((t - 2700.0) / 600.0, 0.0, 1.0) * np.clip(1.0 - (t - 6900.0) / 600.0, 0, 1)
    rng = np.random.default_rng(1)
    keys = np.full(KEY_GROUPS, 1.0 / KEY_GROUPS)
    wave = 1500.0 + 2500.0 * rise
    hi = Trace("hi", "wave", 10.0, wave * np.exp(rng.normal(0, 0.02, steps)), wave, keys)
    flat = np.full(steps, 3000.0)
    lo = Trace("lo", "flat", 10.0, flat * np.exp(rng.normal(0, 0.02, steps)), flat, keys)
    model = PipelineModel(STAGES, partitions=64)

    def run(budget: int | None) -> FleetResult:
        js = [Jizhi(), Jizhi()]
        fleet = JizhiFleet(js, [10, 1], budget, names=["hi", "lo"])
        return simulate_fleet([Member(hi, model, js[0]), Member(lo, model, js[1])], fleet)

    free = run(None)
    assert all(r.attainment >= 0.999 and r.shed == 0.0 for r in free.results)
    assert free.peak_consumers > 24
    short = run(24)
    h, low = short.results
    assert h.attainment >= 0.999 and h.shed == 0.0
    assert 0.2 < low.shed / low.offered < 0.6 and low.attainment < 0.8
    assert low.admitted_attainment >= 0.99
    assert short.peak_consumers <= 24
