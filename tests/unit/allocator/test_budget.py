"""The budget split across services: tables for the named cases, properties for the rule."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from allocator.budget import ServiceAsk, StageAsk, split_budget


def svc(
    name: str,
    priority: int,
    desired: tuple[int, ...],
    *,
    rate: float | None = 100.0,
    offered: float = 0.0,
    current: tuple[int, ...] | None = None,
) -> ServiceAsk:
    """Its edge (s0) is fast (10,000 events/s per consumer) unless unmeasured; the later
    stages do ``rate`` events/s per consumer."""
    cur = current or (0,) * len(desired)
    edge = None if rate is None else 10_000.0
    return ServiceAsk(
        name,
        priority,
        tuple(
            StageAsk(f"s{i}", d, c, rate if i else edge)
            for i, (d, c) in enumerate(zip(desired, cur, strict=True))
        ),
        offered,
    )


def grants(split: object) -> dict[str, tuple[int, ...]]:
    return {g.name: tuple(g.granted.values()) for g in split.services}  # type: ignore[attr-defined]


def test_unlimited_gives_every_decider_what_it_wants() -> None:
    s = split_budget([svc("a", 1, (2, 3)), svc("b", 0, (1, 1))], None)
    assert grants(s) == {"a": (2, 3), "b": (1, 1)}
    assert {g.reason for g in s.services} == {"unlimited"}
    assert all(g.admission is None for g in s.services)


@pytest.mark.parametrize(
    ("budget", "want", "reasons", "admission"),
    [
        # both fit: each gets what its decider wants, nobody is shed
        (10, {"hi": (1, 3), "lo": (1, 3)}, ("within_budget", "within_budget"), (None, None)),
        (8, {"hi": (1, 3), "lo": (1, 3)}, ("within_budget", "within_budget"), (None, None)),
        # short by one: hi untouched, lo loses a consumer of its later stage and is shed to what
        # its two consumers there complete at 0.75 x 100/s
        (7, {"hi": (1, 3), "lo": (1, 2)}, ("within_budget", "short"), (None, 150.0)),
        (6, {"hi": (1, 3), "lo": (1, 1)}, ("within_budget", "short"), (None, 75.0)),
        # lo cannot run both stages: its edge alone answers every request 'shed'
        (5, {"hi": (1, 3), "lo": (1, 0)}, ("within_budget", "edge_only"), (None, 0.0)),
        # nothing left for lo at all
        (4, {"hi": (1, 3), "lo": (0, 0)}, ("within_budget", "starved"), (None, 0.0)),
        # hi itself short: its edge first, then its later stage; lo gets nothing
        (3, {"hi": (1, 2), "lo": (0, 0)}, ("short", "starved"), (150.0, 0.0)),
        (1, {"hi": (1, 0), "lo": (0, 0)}, ("edge_only", "starved"), (0.0, 0.0)),
        (0, {"hi": (0, 0), "lo": (0, 0)}, ("starved", "starved"), (0.0, 0.0)),
    ],
)
def test_higher_priority_first_and_the_lower_one_shed(
    budget: int,
    want: dict[str, tuple[int, ...]],
    reasons: tuple[str, str],
    admission: tuple[float | None, float | None],
) -> None:
    """Both services offered 200 req/s, 100 events/s per consumer: 3 consumers each at 0.75."""
    services = [svc("lo", 1, (1, 3), offered=200.0), svc("hi", 9, (1, 3), offered=200.0)]
    s = split_budget(services, budget)
    assert grants(s) == want
    assert (s.of("hi").reason, s.of("lo").reason) == reasons
    assert (s.of("hi").admission, s.of("lo").admission) == admission
    assert s.granted <= budget


def test_a_shed_service_is_sized_for_what_is_offered_not_for_what_it_admits() -> None:
    """lo is shed: its deciders size its later stage for the admitted 75/s (1 consumer), but it
    needs 3 for the 200/s offered, so it does not look as if it fitted and is not unshed."""
    lo = svc("lo", 1, (1, 1), offered=200.0)
    s = split_budget([lo, svc("hi", 9, (1, 3), offered=200.0)], 7)
    assert s.of("lo").need == {"s0": 1, "s1": 3}
    assert (s.of("lo").reason, s.of("lo").admission) == ("short", 150.0)
    roomy = split_budget([lo, svc("hi", 9, (1, 3), offered=200.0)], 8)
    assert roomy.of("lo").reason == "within_budget" and roomy.of("lo").admission is None
    assert roomy.of("lo").granted == {"s0": 1, "s1": 1}  # what its decider wants now: it rises


def test_equal_priorities_share_in_proportion_to_need() -> None:
    a = svc("a", 5, (1, 8), offered=600.0)  # 600/s at 0.75 x 100/s: 8
    b = svc("b", 5, (1, 4), offered=300.0)
    s = split_budget([a, b], 8)
    assert s.of("a").need == {"s0": 1, "s1": 8} and s.of("b").need == {"s0": 1, "s1": 4}
    assert grants(s) == {"a": (1, 4), "b": (1, 2)}  # half of each one's later stage
    assert (s.of("a").admission, s.of("b").admission) == (300.0, 150.0)


def test_the_edge_of_a_short_service_is_sized_for_every_request_first() -> None:
    """Its edge sees every offered request, admitted or shed: it is filled before later stages."""
    s = split_budget([svc("a", 1, (3, 3), offered=200.0)], 4)
    assert grants(s) == {"a": (3, 1)}


def test_running_consumers_are_kept_rather_than_others_started() -> None:
    s = split_budget([svc("a", 1, (1, 2, 2), current=(1, 0, 2), offered=100.0)], 4)
    assert grants(s) == {"a": (1, 1, 2)}


def test_unmeasured_services_are_not_limited() -> None:
    s = split_budget([svc("a", 1, (1, 4), rate=None), svc("b", 2, (1, 1), rate=None)], 4)
    assert (s.of("a").reason, s.of("a").admission) == ("short", None)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="budget"):
        split_budget([], -1)
    with pytest.raises(ValueError, match="twice"):
        split_budget([svc("a", 1, (1,)), svc("a", 2, (1,))], 3)


# -- properties -----------------------------------------------------------------------------------

stage_st = st.builds(
    StageAsk,
    name=st.just(""),
    desired=st.integers(0, 12),
    current=st.integers(0, 12),
    service_rate=st.one_of(st.none(), st.floats(1.0, 1e4)),
    partitions=st.one_of(st.none(), st.integers(1, 64)),
)


@st.composite
def fleets(draw: st.DrawFn) -> list[ServiceAsk]:
    n = draw(st.integers(1, 5))
    out = []
    for i in range(n):
        stages = draw(st.lists(stage_st, min_size=1, max_size=5))
        named = tuple(
            StageAsk(f"s{j}", x.desired, x.current, x.service_rate, x.partitions)
            for j, x in enumerate(stages)
        )
        out.append(ServiceAsk(f"svc{i}", draw(st.integers(0, 3)), named, draw(st.floats(0.0, 5e4))))
    return out


@settings(max_examples=400, deadline=None)
@given(fleets(), st.integers(0, 80))
def test_properties_of_the_split(services: list[ServiceAsk], budget: int) -> None:
    s = split_budget(services, budget)
    # never more than the budget, never more than a stage needs
    assert s.granted <= budget
    for g in s.services:
        assert all(0 <= g.granted[k] <= g.need[k] for k in g.need)
    # a higher-priority service never has less of its need met than a lower one
    wanting = [g for g in s.services if sum(g.need.values()) > 0]
    for hi in wanting:
        for lo in wanting:
            if hi.priority > lo.priority:
                assert hi.met >= lo.met, (hi, lo)
    # no shedding when the budget covers every need
    if sum(sum(g.need.values()) for g in s.services) <= budget:
        assert all(g.admission is None and g.reason == "within_budget" for g in s.services)
    # a service that runs has every stage it needs at one consumer at least
    for g in s.services:
        if g.reason in ("short", "within_budget"):
            assert all(g.granted[k] >= 1 for k, n in g.need.items() if n > 0)
        if g.admission is not None:
            assert g.reason != "within_budget"


@settings(max_examples=200, deadline=None)
@given(fleets(), st.integers(0, 80))
def test_more_budget_never_serves_a_sole_top_service_less(
    services: list[ServiceAsk], budget: int
) -> None:
    top = max(s.priority for s in services)
    assume(sum(s.priority == top for s in services) == 1)
    first = next(s.name for s in services if s.priority == top)
    a, b = split_budget(services, budget), split_budget(services, budget + 1)
    assert b.of(first).met >= a.of(first).met
