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
    assert then == pytest.approx(float(trace.history[i : i + 30].mean()), rel=0.02)
    assert ahead is not None and ahead >= then * 0.99  # the evening still climbs at 18:00
    off = Jizhi(forecast=False)
    off.start(PipelineModel(STAGES, partitions=64), trace)
    assert off._history is None  # no history, no forecast: a purely reactive allocator
