"""KEDA's rule as the simulator drives it, and the planner against exhaustive search."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.baselines import KedaOptions, KedaState, keda_step, keda_total_lag, static_peak
from allocator.planner import Sample, curves, evaluate, plan_split, proportional_split

K = KedaOptions(lag_threshold=10.0)


@pytest.mark.parametrize(
    ("lags", "partitions", "opts", "total"),
    [
        ([5, 5, 5], 3, K, 15.0),
        ([-3, 5], 2, K, 5.0),  # a negative lag (committed ahead of a stale end) counts as 0
        ([500, 0, 0], 3, K, 30.0),  # capped at partitions x threshold
        ([500, 0, 0], 3, KedaOptions(lag_threshold=10.0, allow_idle_consumers=True), 500.0),
    ],
)
def test_keda_total_lag(
    lags: list[float], partitions: int, opts: KedaOptions, total: float
) -> None:
    assert keda_total_lag(lags, partitions, opts) == total


@pytest.mark.parametrize(
    ("state", "lag", "parts", "now", "replicas"),
    [
        (KedaState(2), 60.0, 10, 100.0, 6),  # ceil(60 / 10)
        (KedaState(2), 25.0, 10, 100.0, 3),  # ceil(2.5) = 3: outside the 10% tolerance
        (KedaState(2), 21.0, 10, 100.0, 2),  # ratio 1.05: within the tolerance
        (KedaState(10), 95.0, 10, 100.0, 10),  # within 10%: unchanged
        (KedaState(2), 1000.0, 10, 100.0, 6),  # +4 pods per period at most
        (KedaState(2), 1000.0, 4, 100.0, 4),  # never above partitions
        (KedaState(6, ((50.0, 6),)), 10.0, 10, 100.0, 6),  # scale-down stabilisation
        (KedaState(6, ((-300.0, 6),)), 10.0, 10, 100.0, 1),  # window passed
        (KedaState(2, last_up=95.0), 60.0, 10, 100.0, 2),  # one scale-up per 15 s
    ],
)
def test_keda_step(state: KedaState, lag: float, parts: int, now: float, replicas: int) -> None:
    assert keda_step(state, lag, parts, now, K).replicas == replicas


def test_static_peak() -> None:
    assert static_peak(1000, 100, 0.5, 64) == 20
    assert static_peak(1000, 100, 0.5, 8) == 8
    assert static_peak(0, 100, 0.5, 8) == 1


def test_curves_are_monotone_interpolated_and_extended() -> None:
    c = curves(
        [Sample("a", 1, 100), Sample("a", 2, 180), Sample("a", 4, 170), Sample("a", 4, 200)],
        up_to=6,
    )["a"]
    assert c[:5] == (0.0, 100.0, 180.0, 190.0, 200.0)
    assert c[6] == pytest.approx(220.0)


def _brute(by_stage: dict[str, tuple[float, ...]], budget: int) -> float:
    stages = sorted(by_stage)
    best = 0.0
    for combo in itertools.product(range(1, budget + 1), repeat=len(stages)):
        if sum(combo) <= budget:
            best = max(best, evaluate(dict(zip(stages, combo, strict=True)), by_stage).throughput)
    return best


@settings(max_examples=150, deadline=None)
@given(
    gains=st.lists(st.lists(st.floats(0, 100), min_size=8, max_size=8), min_size=2, max_size=3),
    budget=st.integers(3, 8),
)
def test_plan_split_is_optimal_and_beats_proportional(
    gains: list[list[float]], budget: int
) -> None:
    by_stage = {}
    for i, g in enumerate(gains):
        acc = [0.0]
        for x in g:
            acc.append(acc[-1] + x)
        by_stage[f"s{i}"] = tuple(acc)
    if budget < len(by_stage):
        return
    plan = plan_split(by_stage, budget)
    assert sum(plan.consumers.values()) <= budget
    assert plan.throughput == pytest.approx(_brute(by_stage, budget), abs=1e-6)
    for s, n in plan.consumers.items():  # no consumer idles: one fewer anywhere costs throughput
        assert n == 1 or by_stage[s][n - 1] < plan.throughput - 1e-9
    prop = proportional_split({s: c[1] for s, c in by_stage.items()}, budget)
    assert sum(prop.values()) <= budget
    assert plan.throughput >= evaluate(prop, by_stage).throughput - 1e-6


def test_planner_beats_proportional_when_a_stage_saturates() -> None:
    """embed is store-bound: its 3rd consumer adds little. Proportional split from one-consumer
    rates gives it consumers it cannot use; the planner gives them to score."""
    history = [
        *(Sample("embed", n, r) for n, r in [(1, 100), (2, 190), (3, 210), (4, 220)]),
        *(Sample("score", n, 60 * n) for n in range(1, 9)),
    ]
    by_stage = curves(history, up_to=12)
    plan = plan_split(by_stage, 8)
    prop = evaluate(proportional_split({"embed": 100, "score": 60}, 8), by_stage)
    assert plan.throughput > prop.throughput
    assert plan.consumers == {"embed": 4, "score": 4}  # 220 req/s against 210


def test_plan_split_rejects_a_budget_below_one_per_stage() -> None:
    with pytest.raises(ValueError, match="budget"):
        plan_split({"a": (0.0, 1.0), "b": (0.0, 1.0)}, 1)
