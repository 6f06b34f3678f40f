"""Table tests and properties of the allocator's pure policies."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.policy import (
    PartitionOptions,
    ScalerState,
    ScalingOptions,
    ShedOptions,
    ShedState,
    StageLoad,
    assign_partitions,
    consumers_needed,
    decide_consumers,
    partitions_needed,
    shed_step,
)

OPTS = ScalingOptions(
    target_utilisation=0.5,
    drain_s=10.0,
    up_cooldown_s=10.0,
    down_cooldown_s=60.0,
    down_window_s=120.0,
    tolerance=0.1,
    lookahead_s=0.0,
    up_step=0.0,
    trend_floor=0.0,
    in_flight_s=0.0,
)


def load(
    arrival: float, lag: float = 0.0, rate: float | None = 100.0, parts: int = 64, **kw: float
) -> StageLoad:
    return StageLoad(arrival, lag, rate, parts, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "state", "obs", "now", "desired", "reason"),
    [
        ("steady", ScalerState(4), load(200), 1000, 4, "hold"),
        ("arrivals up", ScalerState(4), load(400), 1000, 8, "scale_up"),
        ("lag drives it", ScalerState(4), load(100, lag=5000), 1000, 12, "scale_up_lag"),
        (
            "forecast ahead",
            ScalerState(4),
            load(100, forecast_rate=600),
            1000,
            12,
            "scale_up_forecast",
        ),
        (
            "capped by partitions",
            ScalerState(4),
            load(10_000, parts=6),
            1000,
            6,
            "capped_by_partitions",
        ),
        (
            "at the cap already",
            ScalerState(6),
            load(10_000, parts=6),
            1000,
            6,
            "capped_by_partitions",
        ),
        ("up cool-down", ScalerState(4, last_up=995), load(400), 1000, 4, "hold_cooldown"),
        ("unmeasured with work", ScalerState(0), load(50, rate=None), 1000, 1, "unmeasured"),
        ("unmeasured keeps size", ScalerState(3), load(50, rate=None), 1000, 3, "unmeasured"),
        ("idle unmeasured", ScalerState(2), load(0, rate=None), 1000, 1, "scale_down"),
        ("down after cool-down", ScalerState(8), load(100), 1000, 2, "scale_down"),
        ("down cool-down", ScalerState(8, last_up=990), load(100), 1000, 8, "hold_cooldown"),
        (
            "stabilising",
            ScalerState(8, recent=((950.0, 8),)),
            load(100),
            1000,
            8,
            "hold_stabilising",
        ),
        ("within tolerance", ScalerState(20), load(920), 1000, 20, "hold_tolerance"),
        ("partitions shrank", ScalerState(10), load(1000, parts=4), 1000, 4, "scale_down"),
        ("zero partitions", ScalerState(1), load(100, parts=0), 1000, 0, "scale_down"),
    ],
)
def test_decide_consumers(  # noqa: PLR0917 - one parameter per table column
    name: str, state: ScalerState, obs: StageLoad, now: float, desired: int, reason: str
) -> None:
    _, d = decide_consumers(state, obs, now, OPTS)
    assert (d.desired, d.reason) == (desired, reason), name


def test_needed_is_arrivals_plus_drain_over_capacity() -> None:
    assert consumers_needed(load(100, lag=1000), OPTS) == pytest.approx((100 + 100) / 50)
    assert math.isinf(consumers_needed(load(1, rate=None), OPTS))
    assert consumers_needed(load(0, rate=None), OPTS) == 0.0


def test_trend_projects_a_rising_rate() -> None:
    opts = replace(OPTS, lookahead_s=20.0)
    _, d = decide_consumers(ScalerState(2), load(100, trend=5.0), 0.0, opts)
    assert d.need == pytest.approx((100 + 100) / 50)


def test_a_rise_within_noise_is_not_extrapolated() -> None:
    """0.4%/s of the rate is the floor: 0.3/s on 100/s is noise, 0.5/s a real rise."""
    opts = replace(OPTS, lookahead_s=20.0, trend_floor=0.004)
    assert consumers_needed(load(100, trend=0.3), opts) == pytest.approx(100 / 50)
    assert consumers_needed(load(100, trend=0.5), opts) == pytest.approx(110 / 50)


def test_lag_of_events_in_flight_is_no_backlog() -> None:
    """A stage keeping up at 100/s shows ~1 s of arrivals as lag: nothing to drain."""
    opts = replace(OPTS, in_flight_s=1.0)
    assert consumers_needed(load(100, lag=100), opts) == pytest.approx(100 / 50)
    assert consumers_needed(load(100, lag=1100), opts) == pytest.approx((100 + 100) / 50)


def test_up_step_adds_at_least_a_fraction() -> None:
    opts = replace(OPTS, up_step=0.5)
    _, d = decide_consumers(ScalerState(10), load(550), 0.0, opts)
    assert d.desired == 15


def test_scale_down_waits_for_the_window_then_goes_to_its_maximum() -> None:
    state = ScalerState(8)
    state, d = decide_consumers(state, load(300), 0.0, OPTS)  # wants 6: first sample
    assert d.reason == "scale_down" and d.desired == 6
    state, d = decide_consumers(state, load(100), 100.0, OPTS)  # wants 2, but 6 was seen
    assert (d.desired, d.reason) == (6, "hold_stabilising")
    state, d = decide_consumers(state, load(100), 130.0, OPTS)  # 6 is out of the window
    assert (d.desired, d.reason) == (2, "scale_down")


def test_options_validate() -> None:
    with pytest.raises(ValueError, match="target_utilisation"):
        ScalingOptions(target_utilisation=0).validate()
    with pytest.raises(ValueError, match="trend_floor"):
        ScalingOptions(trend_floor=-1).validate()
    ScalingOptions().validate()


@settings(max_examples=300, deadline=None)
@given(
    current=st.integers(0, 200),
    arrival=st.floats(0, 1e6),
    lag=st.floats(0, 1e7),
    rate=st.one_of(st.none(), st.floats(0.1, 1e5)),
    parts=st.integers(0, 128),
    forecast=st.one_of(st.none(), st.floats(0, 1e6)),
    now=st.floats(0, 1e5),
)
def test_never_more_consumers_than_partitions(  # noqa: PLR0917
    current: int,
    arrival: float,
    lag: float,
    rate: float | None,
    parts: int,
    forecast: float | None,
    now: float,
) -> None:
    state = ScalerState(min(current, parts))
    for step in range(3):
        state, d = decide_consumers(
            state, StageLoad(arrival, lag, rate, parts, forecast), now + step * 5, ScalingOptions()
        )
        assert 0 <= d.desired <= parts
        assert state.consumers == d.desired


@settings(max_examples=100, deadline=None)
@given(noise=st.lists(st.floats(0.95, 1.05), min_size=60, max_size=60))
def test_noise_within_tolerance_does_not_flap(noise: list[float]) -> None:
    """A steady load with +-5% noise: after settling, the size never goes down and up again."""
    state = ScalerState(1)
    sizes = []
    for i, n in enumerate(noise):
        state, d = decide_consumers(state, load(1000 * n), i * 10.0, ScalingOptions())
        sizes.append(d.desired)
    changes = sum(1 for a, b in itertools.pairwise(sizes[1:]) if a != b)
    assert changes <= 2


# -- partitions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "need", "opts", "expect"),
    [
        (6, 4.0, PartitionOptions(), (6, "enough")),
        (6, 6.0, PartitionOptions(), (6, "enough")),
        (6, 7.0, PartitionOptions(), (12, "grow")),
        (6, 10.0, PartitionOptions(), (24, "grow")),
        (8, 30.0, PartitionOptions(max_partitions=32), (32, "grow")),
        (8, 40.0, PartitionOptions(max_partitions=32), (32, "capped_by_max_partitions")),
        (32, 40.0, PartitionOptions(max_partitions=32), (32, "capped_by_max_partitions")),
        (6, math.inf, PartitionOptions(), (6, "enough")),
    ],
)
def test_partitions_needed(
    current: int, need: float, opts: PartitionOptions, expect: tuple[int, str]
) -> None:
    assert partitions_needed(current, need, opts) == expect


def test_partitions_never_shrink_and_reject_empty_topics() -> None:
    assert partitions_needed(64, 1.0, PartitionOptions())[0] == 64
    with pytest.raises(ValueError, match="at least one"):
        partitions_needed(0, 1.0, PartitionOptions())


# -- assignment --------------------------------------------------------------------------------


def test_assignment_balances_hot_partitions() -> None:
    rates = [50, 40, 30, 10, 10, 10, 10, 10, 10, 10, 5, 5]
    a = assign_partitions(rates, ["a", "b", "c"])
    assert sorted(p for parts in a.owners.values() for p in parts) == list(range(12))
    assert a.busiest_over_mean() <= 1.05


def test_assignment_is_sticky_when_nothing_changed() -> None:
    rates = [5.0, 3, 3, 2, 2, 1, 1, 1]
    first = assign_partitions(rates, ["a", "b"])
    prev = {p: c for c, parts in first.owners.items() for p in parts}
    again = assign_partitions(rates, ["a", "b"], prev)
    assert again.owners == first.owners and again.moved == 0


def test_a_new_consumer_takes_only_what_balance_needs() -> None:
    rates = [1.0] * 12
    prev = {p: "a" if p < 6 else "b" for p in range(12)}
    a = assign_partitions(rates, ["a", "b", "c"], prev, balance=1.2)
    assert len(a.owners["c"]) == 4 and a.moved == 4


def test_a_new_consumer_gets_a_full_share_however_many_there_were() -> None:
    """From 10 to 11 consumers each old one carries 1.1x the new mean, inside balance 1.2: a
    sticky rule that let them keep it would leave the new consumer idle."""
    rates = [1.0] * 110
    prev = {p: f"c{p % 10:02d}" for p in range(110)}
    names = [f"c{i:02d}" for i in range(11)]
    a = assign_partitions(rates, names, prev, balance=1.2)
    assert len(a.owners["c10"]) == 10 and a.moved == 10
    assert a.busiest_over_mean() == 1.0


def test_partitions_of_a_departed_consumer_move_and_count() -> None:
    prev = {0: "a", 1: "b", 2: "gone", 3: "gone"}
    a = assign_partitions([1.0] * 4, ["a", "b"], prev)
    assert a.moved == 2 and a.busiest_over_mean() == 1.0


def test_unmeasured_rates_balance_counts_and_no_consumers_is_empty() -> None:
    a = assign_partitions([0.0] * 10, ["a", "b", "c"])
    assert sorted(len(v) for v in a.owners.values()) == [3, 3, 4]
    assert assign_partitions([1.0, 2.0], []).owners == {}


@settings(max_examples=300, deadline=None)
@given(
    rates=st.lists(st.floats(0, 100), min_size=1, max_size=200),
    consumers=st.integers(1, 40),
    seed=st.integers(0, 1000),
    balance=st.sampled_from([1.1, 1.2, 1.3]),
)
def test_assignment_balance_bound(
    rates: list[float], consumers: int, seed: int, balance: float
) -> None:
    """Busiest <= max(balance x mean, mean + hottest): so <= balance x mean whenever no
    partition is hotter than (balance - 1) x mean. Holds whatever the previous owners were."""
    import random  # noqa: PLC0415

    rng = random.Random(seed)
    names = [f"c{i}" for i in range(consumers)]
    prev = {p: rng.choice([*names, "gone"]) for p in range(len(rates)) if rng.random() < 0.7}
    a = assign_partitions(rates, names, prev, balance=balance)
    assert sorted(p for parts in a.owners.values() for p in parts) == list(range(len(rates)))
    r = rates if sum(rates) > 0 else [1.0] * len(rates)
    mean = sum(r) / consumers
    busiest = max(a.loads.values())
    assert busiest <= max(balance * mean, mean + max(r)) + 1e-6
    if max(r) <= (balance - 1) * mean:
        assert busiest <= balance * mean + 1e-6
    owned_before = {prev[p] for p in prev} & set(names)
    for n in set(names) - owned_before:  # a newcomer gets a share, less at most one partition
        assert a.loads[n] >= mean - max(r) - 1e-6


# -- shedding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "p99", "capacity", "arrival", "rate", "reason"),
    [
        (ShedState(), None, 100, 100, 0.0, "no_signal"),
        (ShedState(), 0.05, 100, 100, 0.0, "unlimited"),
        (ShedState(), 0.3, 100, 150, 92.1, "latency_high"),  # cut 5% + overshoot share
        (ShedState(), 0.3, 200, 150, 0.0, "hold"),  # keeping up: a backlog draining
        (ShedState(80), 0.3, 100, 150, 80.0, "hold"),  # already below what completes
        (ShedState(), 2.0, 100, 150, 75.0, "latency_high"),  # floor: half the arrivals
        (ShedState(80), 0.05, 100, 150, 96.0, "room"),
        (ShedState(140), 0.05, 100, 150, 0.0, "restored"),
        (ShedState(80), 0.15, 100, 150, 80.0, "hold"),
    ],
)
def test_shed_step(  # noqa: PLR0917 - one parameter per table column
    state: ShedState, p99: float | None, capacity: float, arrival: float, rate: float, reason: str
) -> None:
    _, d = shed_step(state, p99_s=p99, deadline_s=0.2, capacity=capacity, arrival=arrival)
    assert d.reason == reason
    assert d.rate == pytest.approx(rate, rel=0.02)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(100, 1e6),
    overload=st.floats(1.05, 1.9),
)
def test_shedding_settles_below_capacity_without_oscillating(
    capacity: float, overload: float
) -> None:
    """A plant whose latency explodes above its capacity: the controller converges to an
    admission rate just below capacity, and stays in a narrow band."""
    arrival = capacity * overload
    deadline = 0.2
    state = ShedState()
    backlog = 0.0
    rates = []
    delays = []
    for _ in range(200):
        admitted = min(arrival, state.rate) if state.rate > 0 else arrival
        backlog = max(0.0, backlog + (admitted - capacity) * 1.0)
        p99 = 0.02 / max(1e-3, 1 - min(admitted / capacity, 0.999)) * 0.05 + backlog / capacity
        completed = capacity if backlog > 0 else admitted
        state, _ = shed_step(
            state,
            p99_s=p99,
            deadline_s=deadline,
            capacity=capacity if backlog > 0 else max(completed, capacity),
            arrival=arrival,
            opts=ShedOptions(),
        )
        rates.append(state.rate if state.rate > 0 else arrival)
        delays.append(backlog / capacity)
    tail = rates[-50:]
    # a bounded cycle around capacity: cut a little below it, creep back above, cut again
    assert max(tail) <= capacity * 1.25
    assert min(tail) >= max(capacity * 0.6, arrival * ShedOptions().floor) - 1e-6
    assert 0.85 * capacity <= sum(tail) / len(tail) <= 1.05 * capacity
    assert max(delays[-50:]) < 2 * deadline
    assert sum(delays[-50:]) / 50 < deadline
