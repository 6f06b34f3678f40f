"""The allocator's decisions as pure functions: state and observations in, decision and new state
out, no clocks, no I/O. The reconcile loop and the simulator drive the same code, and every edge
case is a named option or a named reason, table-tested.

Four decisions:

- `decide_consumers`: how many consumers a stage needs — from the arrival rate (or the forecast
  from history, whichever is higher), the lag to drain within ``drain_s`` and the measured
  per-consumer service rate, at a utilisation target. Scale-up is prompt; scale-down waits for a
  cool-down, follows the highest recommendation of a stabilisation window and ignores changes
  within a tolerance, so the stage does not flap. Never more consumers than partitions.
- `partitions_needed`: grow a topic (Kafka only grows) when the consumers a stage needs exceed its
  partitions, by doubling, so that each old partition's keys split over exactly two partitions.
- `assign_partitions`: sticky longest-processing-time-first packing of measured per-partition
  rates onto consumers, so the busiest carries at most ``balance`` times the mean whenever no
  single partition is hotter than ``balance - 1`` times the mean.
- `shed_step`: a feedback controller on the ingest admission rate from the measured p99
  end-to-end latency against the deadline budget.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

ConsumerReason = Literal[
    "hold",
    "unmeasured",
    "scale_up",
    "scale_up_lag",
    "scale_up_forecast",
    "capped_by_partitions",
    "scale_down",
    "hold_cooldown",
    "hold_stabilising",
    "hold_tolerance",
    # set by the budget across services (allocator.budget), over the decider's own reason:
    "capped_by_budget",
    "sized_for_offered",
    "budget_released",
]
PartitionReason = Literal["enough", "grow", "capped_by_max_partitions"]
ShedReason = Literal[
    "unlimited",
    "hold",
    "latency_high",
    "room",
    "restored",
    "no_signal",
    # the budget across services limits the service's admission / no longer does:
    "budget",
    "budget_lifted",
]


# -- consumers per stage ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScalingOptions:
    """How eagerly a stage is resized. Defaults suit a reconcile every 5-15 s.

    ``target_utilisation``: the busy fraction each consumer is sized for; the rest is headroom
    for noise, a spike's first seconds and the queueing delay that grows as busy time nears 1.
    ``drain_s``: the time allowed to work off the current lag on top of the arrivals.
    ``tolerance``: a scale-down smaller than this fraction of the current size is ignored.
    ``up_cooldown_s``: none by default: consumers being started count as desired already, so
    asking again at the next look never orders them twice, and a ramp is followed look by look.
    ``down_window_s``: scale down only to the highest recommendation seen in this window.
    ``up_step``: a scale-up adds at least this fraction of the current size, so a steady
    climb is a few steps an hour rather than one consumer per look.
    ``lookahead_s``: a rising arrival rate is extrapolated this far (about a consumer's
    start-up plus one look), so capacity asked for now is enough when it arrives.
    ``trend_floor``: ...but only a rise steeper than this share of the rate per second (0.4%/s:
    doubling within ~4 minutes). Traffic noise tilts the rate by ~0.2%/s between two looks;
    extrapolating that bought consumers for rises that never came (9% more in the simulator).
    ``in_flight_s``: a stage that keeps up still shows this many seconds of arrivals as lag
    (consumed, not yet committed; workers commit every second), which is no backlog to drain.
    """

    target_utilisation: float = 0.75
    drain_s: float = 30.0
    min_consumers: int = 1
    max_consumers: int = 1 << 20
    up_cooldown_s: float = 0.0
    down_cooldown_s: float = 60.0
    down_window_s: float = 300.0
    tolerance: float = 0.15
    lookahead_s: float = 45.0
    trend_floor: float = 0.004
    in_flight_s: float = 1.0
    up_step: float = 0.05

    def validate(self) -> None:
        bad = []
        if not 0.0 < self.target_utilisation <= 1.0:
            bad.append("target_utilisation (0, 1]")
        if self.drain_s <= 0:
            bad.append("drain_s > 0")
        if self.min_consumers < 0 or self.max_consumers < max(1, self.min_consumers):
            bad.append("0 <= min_consumers <= max_consumers, max_consumers >= 1")
        if min(self.up_cooldown_s, self.down_cooldown_s, self.down_window_s, self.lookahead_s) < 0:
            bad.append("cool-downs and window >= 0")
        if self.trend_floor < 0 or self.in_flight_s < 0:
            bad.append("trend_floor >= 0, in_flight_s >= 0")
        if not 0.0 <= self.tolerance < 1.0 or self.up_step < 0:
            bad.append("tolerance [0, 1), up_step >= 0")
        if bad:
            raise ValueError(f"scaling options out of range: {', '.join(bad)}")


@dataclass(frozen=True, slots=True)
class StageLoad:
    """What the allocator observed of one stage, in events and seconds.

    ``service_rate`` is one consumer's rate while busy (events / busy second), None until
    measured; ``trend`` the arrival rate's change (events/s per second); ``forecast_rate`` the
    arrival rate history expects within the forecast's look-ahead.
    """

    arrival_rate: float
    lag: float
    service_rate: float | None
    partitions: int
    forecast_rate: float | None = None
    trend: float = 0.0


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What a stage's scaler remembers between looks: its size and when it last changed."""

    consumers: int
    last_up: float = -math.inf
    last_down: float = -math.inf
    recent: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ConsumerDecision:
    desired: int
    reason: ConsumerReason
    need: float
    """Consumers needed before rounding and capping (inf when unmeasured with lag)."""


def consumers_needed(load: StageLoad, opts: ScalingOptions) -> float:
    """Fractional consumers: (expected arrivals + lag / drain time) / (rate x utilisation)."""
    if load.service_rate is None or load.service_rate <= 0:
        return math.inf if load.lag > 0 or load.arrival_rate > 0 else 0.0
    rate = max(_projected(load, opts), load.forecast_rate or 0.0, 0.0)
    return (rate + _backlog(load, opts) / opts.drain_s) / (
        load.service_rate * opts.target_utilisation
    )


def _backlog(load: StageLoad, opts: ScalingOptions) -> float:
    """Lag beyond what a keeping-up stage always shows: events consumed but not yet committed
    (up to ``in_flight_s`` of arrivals) are no backlog to drain."""
    return max(load.lag - max(load.arrival_rate, 0.0) * opts.in_flight_s, 0.0)


def _projected(load: StageLoad, opts: ScalingOptions) -> float:
    """The arrival rate ``lookahead_s`` ahead, for a rise steeper than noise makes one look."""
    rate = max(load.arrival_rate, 0.0)
    if load.trend <= opts.trend_floor * rate:
        return load.arrival_rate
    return load.arrival_rate + load.trend * opts.lookahead_s


def _up_reason(load: StageLoad, opts: ScalingOptions) -> ConsumerReason:
    rate = max(_projected(load, opts), 0.0)
    forecast = load.forecast_rate or 0.0
    drain = _backlog(load, opts) / opts.drain_s
    if drain > max(rate, forecast):
        return "scale_up_lag"
    if forecast > rate:
        return "scale_up_forecast"
    return "scale_up"


def decide_consumers(
    state: ScalerState, load: StageLoad, now: float, opts: ScalingOptions
) -> tuple[ScalerState, ConsumerDecision]:
    """One look at one stage: the consumers it should have now, and why."""
    current = state.consumers
    cap = max(0, min(load.partitions, opts.max_consumers))
    floor = min(opts.min_consumers, cap)
    need = consumers_needed(load, opts)
    if math.isinf(need):
        # Unmeasured but busy: at least one consumer, so a rate can be measured at all.
        desired = min(max(current, floor, 1), cap)
        return replace(state, consumers=desired), ConsumerDecision(desired, "unmeasured", need)
    wanted = math.ceil(need - 1e-9)
    rec = min(max(wanted, floor), cap)
    # Only recommendations above the newest can still be the window's maximum: keep those.
    window = tuple((t, r) for t, r in state.recent if now - t < opts.down_window_s and r > rec)
    window = (*window, (now, rec))
    state = replace(state, recent=window)
    if rec > current:
        reason = "capped_by_partitions" if wanted > cap else _up_reason(load, opts)
        if now - state.last_up < opts.up_cooldown_s and current >= floor and current > 0:
            # Right after a scale-up the new consumers have not shown up in the rates yet.
            return state, ConsumerDecision(current, "hold_cooldown", need)
        rec = min(cap, max(rec, math.ceil(current * (1.0 + opts.up_step) - 1e-9)))
        new = replace(state, consumers=rec, last_up=now)
        return new, ConsumerDecision(rec, reason, need)
    if rec == current:
        reason = "capped_by_partitions" if wanted > cap else "hold"
        return state, ConsumerDecision(current, reason, need)
    if current > cap:  # partitions shrank under us (a recreated topic): obey at once
        new = replace(state, consumers=cap, last_down=now)
        return new, ConsumerDecision(cap, "scale_down", need)
    stable = window[0][1]
    if stable >= current:
        return state, ConsumerDecision(current, "hold_stabilising", need)
    if now - max(state.last_up, state.last_down) < opts.down_cooldown_s:
        return state, ConsumerDecision(current, "hold_cooldown", need)
    if current - stable < opts.tolerance * current:
        return state, ConsumerDecision(current, "hold_tolerance", need)
    new = replace(state, consumers=stable, last_down=now)
    return new, ConsumerDecision(stable, "scale_down", need)


# -- partitions per topic ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionOptions:
    """``headroom``: partitions are grown to hold this many times the consumers needed, so a
    topic is not grown again on the next wave; ``max_partitions`` bounds a topic."""

    headroom: float = 1.5
    max_partitions: int = 4096


def partitions_needed(
    current: int, need: float, opts: PartitionOptions
) -> tuple[int, PartitionReason]:
    """Partitions a stage's input topic should have; never fewer than now (Kafka cannot shrink).

    Grows by doubling: with ``murmur2(key) % n`` a key of old partition ``p`` lands on ``p`` or
    ``p + n`` after doubling, so each partition splits in two and per-key order is broken only
    for keys that move, once (see docs/allocator.md for how the switch-over keeps order).
    """
    if current <= 0:
        raise ValueError("a topic has at least one partition")
    if math.isinf(need) or need <= current:
        return current, "enough"
    if current >= opts.max_partitions:
        return current, "capped_by_max_partitions"
    target = need * opts.headroom
    grown = current
    while grown < target and grown * 2 <= opts.max_partitions:
        grown *= 2
    if grown < need:
        return grown, "capped_by_max_partitions"
    return grown, "grow"


# -- partition assignment ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    owners: dict[str, list[int]]
    """Consumer -> the partitions it owns, ascending."""
    loads: dict[str, float]
    moved: int
    """Partitions whose owner changed since ``previous`` (new partitions not counted)."""

    def busiest_over_mean(self) -> float:
        """The imbalance: busiest consumer's load over the mean (1.0 when perfectly even)."""
        if not self.loads:
            return 1.0
        mean = sum(self.loads.values()) / len(self.loads)
        return max(self.loads.values()) / mean if mean > 0 else 1.0


def assign_partitions(
    rates: Sequence[float] | npt.NDArray[np.float64],
    consumers: Sequence[str],
    previous: Mapping[int, str] | None = None,
    *,
    balance: float = 1.2,
) -> Assignment:
    """Place partitions (measured events/s each) on consumers so their loads are even.

    Sticky LPT: each surviving consumer keeps its previous partitions, hottest first, while its
    load stays within ``balance`` x mean (within the mean when a consumer owned nothing before,
    so a new one gets a full share; a consumer always keeps its hottest one); everything
    else goes hottest first to the least-loaded consumer. Because the least-loaded consumer is
    never above the mean, no consumer ends above ``max(balance x mean, mean + hottest
    partition)``; so whenever no partition is hotter than ``(balance - 1) x mean``, busiest <=
    ``balance`` x mean. Unmeasured rates (all zero) balance partition counts instead.
    """
    names = sorted(dict.fromkeys(consumers))
    if not names:
        return Assignment({}, {}, 0)
    r = _rates(rates)
    index = {n: i for i, n in enumerate(names)}
    prev = np.full(len(r), -1, dtype=np.int64)
    gone = 0
    for p, owner in (previous or {}).items():
        if 0 <= p < len(r):
            if owner in index:
                prev[p] = index[owner]
            else:
                gone += 1
    owner_of = assign_indices(r, len(names), prev, balance=balance)
    loads = np.bincount(owner_of, weights=r, minlength=len(names))
    order = np.argsort(owner_of, kind="stable")
    bounds = np.searchsorted(owner_of[order], np.arange(len(names) + 1))
    owners = {n: order[bounds[i] : bounds[i + 1]].tolist() for i, n in enumerate(names)}
    moved = int(((prev >= 0) & (owner_of != prev)).sum()) + gone
    return Assignment(owners, {n: float(loads[i]) for i, n in enumerate(names)}, moved)


def _rates(rates: Sequence[float] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    r = np.maximum(np.asarray(rates, dtype=np.float64), 0.0)
    return r if r.sum() > 0 else np.ones(len(r))


def assign_indices(
    rates: Sequence[float] | npt.NDArray[np.float64],
    consumers: int,
    previous: npt.NDArray[np.int64],
    *,
    balance: float = 1.2,
) -> npt.NDArray[np.int64]:
    """`assign_partitions` on consumer indices 0..consumers-1 (``previous``: -1 = unowned),
    returning each partition's owner: the form the simulator uses at thousands of partitions."""
    r = _rates(rates)
    n_p = len(r)
    if consumers <= 0:
        return np.full(n_p, -1, dtype=np.int64)
    prev = np.where((previous >= 0) & (previous < consumers), previous, -1)
    mean = r.sum() / consumers
    # A consumer that owned nothing (one just started) must get a full share, or a scale-up
    # would change nothing: from n to n + 1 consumers the others carry (n + 1) / n of the new
    # mean, within any balance once n >= 1 / (balance - 1). So then everyone keeps only up to
    # the mean; otherwise up to ``balance`` x the mean, so that nothing moves for noise.
    newcomer = np.bincount(prev[prev >= 0], minlength=consumers).min() == 0
    cap = mean if newcomer else balance * mean
    owner_of = np.full(n_p, -1, dtype=np.int64)
    kept = np.flatnonzero(prev >= 0)
    if len(kept):
        # per previous owner, hottest first: keep while the running load fits under the cap
        order = kept[np.lexsort((kept, -r[kept], prev[kept]))]
        group = prev[order]
        cum = np.cumsum(r[order])
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        base = np.repeat(cum[starts] - r[order][starts], np.diff(np.r_[starts, len(order)]))
        first = np.zeros(len(order), dtype=bool)
        first[starts] = True
        # once one partition does not fit, the cooler ones after it are moved too: a little
        # stricter than one-by-one packing, never looser
        keep = (cum - base <= cap) | first
        owner_of[order[keep]] = group[keep]
    mine = owner_of >= 0
    loads = np.bincount(owner_of[mine], weights=r[mine], minlength=consumers)
    counts = np.bincount(owner_of[mine], minlength=consumers)
    rest = np.flatnonzero(~mine)
    rest = rest[np.lexsort((rest, -r[rest]))]
    heap = [(float(loads[i]), int(counts[i]), i) for i in range(consumers)]
    heapq.heapify(heap)
    for p in rest.tolist():
        load, count, c = heapq.heappop(heap)
        owner_of[p] = c
        heapq.heappush(heap, (load + float(r[p]), count + 1, c))
    return owner_of


# -- load shedding ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShedOptions:
    """Keep the measured p99 between ``low`` and ``high`` fractions of the deadline budget.

    Above ``high`` the admission rate is set just below what the pipeline completes now (its
    capacity while backlogged), by ``cut`` plus the relative overshoot up to ``max_cut``, so the
    backlog drains; below ``low`` it grows by ``increase`` per look, and once it reaches the
    arrival rate the limit is lifted. Cutting to a measured capacity (not multiplying the last
    limit) is what keeps repeated cuts from spiralling down, and the slow rise keeps the loop
    from oscillating.
    """

    high: float = 0.95
    low: float = 0.6
    cut: float = 0.05
    max_cut: float = 0.3
    increase: float = 0.2
    min_rate: float = 1.0
    floor: float = 0.5
    """Never admit less than this share of the arrivals: when latency stays high below it,
    the cause is a hot spot (one partition beyond one consumer) that shedding evenly cannot fix."""


@dataclass(frozen=True, slots=True)
class ShedState:
    rate: float = 0.0
    """The admission limit in requests/s; 0 = unlimited."""


@dataclass(frozen=True, slots=True)
class ShedDecision:
    rate: float
    reason: ShedReason


def shed_step(
    state: ShedState,
    *,
    p99_s: float | None,
    deadline_s: float,
    capacity: float,
    arrival: float,
    opts: ShedOptions = ShedOptions(),
) -> tuple[ShedState, ShedDecision]:
    """One look of the controller. ``capacity`` is the rate the pipeline completed lately (its
    slowest stage's output), ``arrival`` what clients offered; ``p99_s`` None means nothing was
    answered, so there is no signal to act on."""
    if p99_s is None or deadline_s <= 0:
        return state, ShedDecision(state.rate, "no_signal")
    limited = state.rate > 0
    if p99_s > opts.high * deadline_s:
        overshoot = p99_s / (opts.high * deadline_s) - 1.0
        cut = min(opts.max_cut, opts.cut + overshoot * opts.cut)
        rate = max(opts.min_rate, capacity * (1.0 - cut), opts.floor * arrival)
        if limited and state.rate <= rate:
            # Already admitting no more than the pipeline completes: the backlog is draining.
            return state, ShedDecision(state.rate, "hold")
        if rate >= arrival:
            # The pipeline keeps up with the offer: the latency is a backlog draining, not overload.
            return state, ShedDecision(state.rate, "hold")
        return ShedState(rate), ShedDecision(rate, "latency_high")
    if not limited:
        return state, ShedDecision(0.0, "unlimited")
    if p99_s < opts.low * deadline_s:
        rate = state.rate * (1.0 + opts.increase)
        if rate >= arrival:
            return ShedState(0.0), ShedDecision(0.0, "restored")
        return ShedState(rate), ShedDecision(rate, "room")
    return state, ShedDecision(state.rate, "hold")
