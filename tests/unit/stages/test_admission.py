"""Admission: the min-budget rule and the priority-aware token bucket, on a fake clock."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.admission import Admission


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def prio(*p: int) -> npt.NDArray[np.int64]:
    return np.array(p, dtype=np.int64)


def budgets(n: int, ms: float = 100.0) -> npt.NDArray[np.float64]:
    return np.full(n, ms, dtype=np.float64)


batches = st.lists(
    st.tuples(
        st.floats(0.0, 0.5),  # dt before the call
        st.lists(st.integers(0, 9), max_size=40),  # priorities
        st.lists(st.sampled_from([0.0, 0.5, 1.0, 5.0, 100.0]), max_size=40),  # budgets
    ),
    min_size=1,
    max_size=25,
)


# --- the min-budget rule ---------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    budget=st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=50),
    min_budget=st.floats(0.0, 100.0),
    priority=st.integers(0, 9),
)
def test_unlimited_admits_everything_with_enough_budget(
    budget: list[float], min_budget: float, priority: int
) -> None:
    adm = Admission(rate=0.0, min_budget_ms=min_budget, clock=FakeClock())
    b = np.array(budget, dtype=np.float64)
    for _ in range(3):  # no bucket: repeating the call changes nothing
        admitted, too_late = adm.admit(np.full(len(b), priority, dtype=np.int64), b)
        np.testing.assert_array_equal(too_late, b < min_budget)
        np.testing.assert_array_equal(admitted, b >= min_budget)
        assert admitted.dtype == np.bool_ and too_late.dtype == np.bool_
        assert admitted.shape == too_late.shape == b.shape


def test_too_late_boundary_is_strict() -> None:
    adm = Admission(min_budget_ms=5.0, clock=FakeClock())
    b = np.array([4.999, math.nextafter(5.0, 0), 5.0, 5.001, -1.0, 0.0], dtype=np.float64)
    admitted, too_late = adm.admit(np.zeros(6, dtype=np.int64), b)
    assert too_late.tolist() == [True, True, False, False, True, True]
    assert admitted.tolist() == [False, False, True, True, False, False]


def test_zero_min_budget_only_rejects_negative_budgets() -> None:
    adm = Admission(min_budget_ms=0.0, clock=FakeClock())
    admitted, too_late = adm.admit(prio(0, 0, 0), np.array([-0.001, 0.0, 1.0]))
    assert too_late.tolist() == [True, False, False]
    assert admitted.tolist() == [False, True, True]


def test_too_late_requests_do_not_spend_tokens() -> None:
    clock = FakeClock()
    adm = Admission(rate=100.0, burst_seconds=0.05, min_budget_ms=10.0, clock=clock)  # 5 tokens
    admitted, too_late = adm.admit(np.full(8, 9, dtype=np.int64), budgets(8, 1.0))
    assert too_late.all() and not admitted.any()
    admitted, _ = adm.admit(prio(0, 0, 0, 0, 0, 0), budgets(6))
    assert admitted.tolist() == [True] * 5 + [False]


def test_empty_batch() -> None:
    adm = Admission(rate=10.0, clock=FakeClock())
    admitted, too_late = adm.admit(prio(), budgets(0))
    assert admitted.shape == too_late.shape == (0,)


# --- the token bucket ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(0.5, 2000.0),
    burst=st.floats(0.01, 1.0),
    steps=batches,
)
def test_token_bucket_model(
    rate: float, burst: float, steps: list[tuple[float, list[int], list[float]]]
) -> None:
    clock = FakeClock()
    adm = Admission(rate=rate, burst_seconds=burst, min_budget_ms=1.0, clock=clock)
    capacity = max(1.0, rate * burst)
    tokens = capacity
    for dt, priorities, budget_list in steps:
        n = min(len(priorities), len(budget_list))
        p, b = np.array(priorities[:n], dtype=np.int64), np.array(budget_list[:n])
        clock.advance(dt)
        tokens = min(capacity, tokens + dt * rate)
        admitted, too_late = adm.admit(p, b)

        np.testing.assert_array_equal(too_late, b < 1.0)
        assert not (admitted & too_late).any()
        candidates = ~too_late
        # Never more than the tokens available, and no token left idle while anyone waits.
        assert admitted.sum() <= tokens
        assert admitted.sum() == min(int(candidates.sum()), math.floor(tokens))
        tokens -= int(admitted.sum())

        # The admitted outrank every rejected candidate; ties go in arrival order.
        rejected = candidates & ~admitted
        if admitted.any() and rejected.any():
            assert p[admitted].min() >= p[rejected].max()
            cutoff = p[admitted].min()
            tie_admitted = np.flatnonzero(admitted & (p == cutoff))
            tie_rejected = np.flatnonzero(rejected & (p == cutoff))
            if len(tie_rejected):
                assert tie_admitted.max() < tie_rejected.min()


def test_priority_order_example() -> None:
    clock = FakeClock()
    adm = Admission(rate=30.0, burst_seconds=0.1, clock=clock)  # capacity 3
    admitted, too_late = adm.admit(prio(1, 5, 3, 5, 1, 3), budgets(6))
    assert np.flatnonzero(admitted).tolist() == [1, 2, 3]
    assert not too_late.any()


def test_ties_keep_arrival_order() -> None:
    adm = Admission(rate=40.0, burst_seconds=0.1, clock=FakeClock())  # capacity 4
    admitted, _ = adm.admit(np.full(10, 2, dtype=np.int64), budgets(10))
    assert np.flatnonzero(admitted).tolist() == [0, 1, 2, 3]


def test_too_late_high_priority_does_not_take_a_token() -> None:
    adm = Admission(rate=20.0, burst_seconds=0.1, min_budget_ms=5.0, clock=FakeClock())  # 2
    b = np.array([1.0, 50.0, 50.0, 50.0])
    admitted, too_late = adm.admit(prio(9, 1, 0, 1), b)
    assert too_late.tolist() == [True, False, False, False]
    assert admitted.tolist() == [False, True, False, True]


def test_bucket_refills_with_time_up_to_capacity() -> None:
    clock = FakeClock(0.0)  # binary fractions below, so the token arithmetic is exact
    adm = Admission(rate=64.0, burst_seconds=0.125, clock=clock)  # capacity 8
    assert adm.admit(prio(*[0] * 20), budgets(20))[0].sum() == 8
    assert adm.admit(prio(*[0] * 20), budgets(20))[0].sum() == 0
    clock.advance(3.5 / 64)  # 3.5 tokens
    assert adm.admit(prio(*[0] * 20), budgets(20))[0].sum() == 3
    clock.advance(1.5 / 64)  # 0.5 kept + 1.5
    assert adm.admit(prio(*[0] * 20), budgets(20))[0].sum() == 2
    clock.advance(60.0)  # capped
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 8


def test_capacity_is_at_least_one_token() -> None:
    clock = FakeClock()
    adm = Admission(rate=2.0, burst_seconds=0.1, clock=clock)  # 0.2 -> 1
    assert adm.admit(prio(0, 0), budgets(2))[0].sum() == 1
    clock.advance(0.25)
    assert adm.admit(prio(0, 0), budgets(2))[0].sum() == 0
    clock.advance(0.25)
    assert adm.admit(prio(0, 0), budgets(2))[0].sum() == 1


def test_clock_stepping_back_admits_nothing_extra() -> None:
    # time.time() is the production clock and may step back (NTP): no tokens appear or vanish.
    clock = FakeClock()
    adm = Admission(rate=100.0, burst_seconds=0.1, clock=clock)
    assert adm.admit(prio(*[0] * 10), budgets(10))[0].sum() == 10
    clock.advance(0.005)  # half a token
    assert adm.admit(prio(*[0] * 10), budgets(10))[0].sum() == 0
    clock.advance(-0.02)
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 0
    clock.advance(-5.0)
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 0
    clock.advance(0.01)  # the saved half token plus one
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 1


# --- changing the rate -----------------------------------------------------------------------


def test_rate_property_and_negative_rate_means_unlimited() -> None:
    adm = Admission(rate=-5.0, clock=FakeClock())
    assert adm.rate == 0.0
    assert adm.admit(prio(*[0] * 100), budgets(100))[0].all()
    adm.set_rate(25.0)
    assert adm.rate == 25.0
    adm.set_rate(-1.0)
    assert adm.rate == 0.0


def test_set_rate_lower_clamps_tokens_at_once() -> None:
    clock = FakeClock()
    adm = Admission(rate=1000.0, burst_seconds=0.1, clock=clock)  # 100 tokens banked
    adm.set_rate(10.0)  # capacity 1
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 1
    clock.advance(0.1)
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 1


def test_set_rate_higher_takes_effect() -> None:
    clock = FakeClock()
    adm = Admission(rate=10.0, burst_seconds=1.0, clock=clock)  # capacity 10
    assert adm.admit(prio(*[0] * 50), budgets(50))[0].sum() == 10
    adm.set_rate(200.0)  # capacity 200
    clock.advance(0.5)
    assert adm.admit(prio(*[0] * 500), budgets(500))[0].sum() == 100


def test_set_rate_to_zero_lifts_the_limit_and_back() -> None:
    clock = FakeClock()
    adm = Admission(rate=10.0, burst_seconds=0.1, clock=clock)
    assert adm.admit(prio(*[0] * 5), budgets(5))[0].sum() == 1
    adm.set_rate(0.0)
    assert adm.admit(prio(*[0] * 500), budgets(500))[0].all()
    adm.set_rate(10.0)  # limited again, bucket at most its new capacity
    clock.advance(10.0)
    assert adm.admit(prio(*[0] * 5), budgets(5))[0].sum() == 1


# --- long run --------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "burst"), [(500.0, 0.1), (1000.0, 0.1), (37.0, 0.5)])
def test_long_run_rate_matches_configured_rate(rate: float, burst: float) -> None:
    clock = FakeClock()
    adm = Admission(rate=rate, burst_seconds=burst, clock=clock)
    rng = np.random.default_rng(7)
    total, elapsed = 0, 0.0
    capacity = max(1.0, rate * burst)
    # Drain the initial burst first, so that every later call finds more demand than tokens.
    total += int(adm.admit(prio(*[0] * 1000), budgets(1000))[0].sum())
    assert total == math.floor(capacity)
    for _ in range(5000):
        dt = float(rng.uniform(0.0, 0.004))
        clock.advance(dt)
        elapsed += dt
        n = int(rng.integers(10, 30))  # more than the <= 4 tokens one step can add
        total += int(adm.admit(rng.integers(0, 10, n), budgets(n))[0].sum())
    # Exactly what the bucket allows: the initial burst plus rate x time, less < 1 token left.
    assert capacity + rate * elapsed - 1.0 - 1e-6 <= total <= capacity + rate * elapsed + 1e-6
    assert total / elapsed == pytest.approx(rate, rel=0.1)


@settings(max_examples=30, deadline=None)
@given(
    rate=st.floats(50.0, 5000.0),
    dts=st.lists(st.floats(0.0, 0.01), min_size=50, max_size=200),
)
def test_admitted_never_exceed_burst_plus_rate_times_time(rate: float, dts: list[float]) -> None:
    clock = FakeClock()
    adm = Admission(rate=rate, burst_seconds=0.1, clock=clock)
    total, elapsed = 0, 0.0
    for dt in dts:
        clock.advance(dt)
        elapsed += dt
        total += int(adm.admit(prio(*[5] * 40), budgets(40))[0].sum())
        assert total <= max(1.0, rate * 0.1) + rate * elapsed + 1e-6
