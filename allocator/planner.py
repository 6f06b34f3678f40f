"""The planner: split a fixed budget of cores (consumers) across stages from recorded history.

History is what the allocator saw: for each stage, the throughput it reached with ``n``
consumers while backlogged (so the rate is capacity, not demand). Scaling is rarely linear —
a stage bound by a shared store or by partition skew gains less from its tenth consumer than
from its first — so the planner works on the measured curve ``f_s(n)``, not on a per-core rate.

A pipeline completes ``min_s f_s(n_s)`` requests/s, and keeps its latency target at
``utilisation x`` that; the utilisation is the same factor for every split, so the split that
maximises the bottleneck's capacity is also the one with the most throughput within the target.
With non-decreasing curves, giving each next consumer to the current bottleneck is optimal for
this max-min objective (`plan_split`; the tests check it against exhaustive search). The
proportional split (`proportional_split`) is what one does from per-core rates alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """One recorded look: ``stage`` completed ``rate`` events/s with ``consumers`` while it had
    a backlog."""

    stage: str
    consumers: int
    rate: float


Curve = tuple[float, ...]
"""Capacity with 0, 1, 2, ... consumers (index = consumers)."""


def curves(samples: Iterable[Sample], *, up_to: int) -> dict[str, Curve]:
    """Per stage, capacity for 0..``up_to`` consumers: the best rate seen at each count, made
    non-decreasing (a consumer never lowers capacity: a dip is noise), interpolated linearly
    between counts seen, and extended past the largest count by its last marginal gain."""
    best: dict[str, dict[int, float]] = {}
    for s in samples:
        if s.consumers <= 0 or s.rate < 0:
            continue
        seen = best.setdefault(s.stage, {})
        seen[s.consumers] = max(seen.get(s.consumers, 0.0), s.rate)
    out: dict[str, Curve] = {}
    for stage, seen in best.items():
        points = sorted({0: 0.0, **seen}.items())
        xs = [x for x, _ in points]
        ys = []
        top = 0.0
        for _, y in points:
            top = max(top, y)
            ys.append(top)
        values = []
        for n in range(up_to + 1):
            if n >= xs[-1]:
                gain = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
                values.append(ys[-1] + gain * (n - xs[-1]))
                continue
            i = next(i for i, x in enumerate(xs) if x >= n)
            if xs[i] == n:
                values.append(ys[i])
            else:
                x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
                values.append(y0 + (y1 - y0) * (n - x0) / (x1 - x0))
        out[stage] = tuple(values)
    return out


@dataclass(frozen=True, slots=True)
class Split:
    consumers: dict[str, int]
    throughput: float
    """The bottleneck's capacity, requests/s (before the utilisation target)."""

    def within_target(self, utilisation: float) -> float:
        return self.throughput * utilisation


def _value(curve: Curve, n: int) -> float:
    return curve[min(n, len(curve) - 1)]


def evaluate(split: Mapping[str, int], by_stage: Mapping[str, Curve]) -> Split:
    tput = min((_value(by_stage[s], n) for s, n in split.items()), default=0.0)
    return Split(dict(split), tput)


def plan_split(by_stage: Mapping[str, Curve], budget: int) -> Split:
    """Give each stage one consumer, then each next one to the current bottleneck (ties to the
    stage that gains most). Unused consumers are left out: a flat bottleneck cannot use them."""
    stages = sorted(by_stage)
    if budget < len(stages):
        raise ValueError(f"budget {budget} < {len(stages)} stages: each needs a consumer")
    split = dict.fromkeys(stages, 1)
    for _ in range(budget - len(stages)):
        low = min(_value(by_stage[s], split[s]) for s in stages)
        bottlenecks = [s for s in stages if _value(by_stage[s], split[s]) <= low + 1e-9]
        # several may tie: each must rise before the minimum does; the largest gain goes first
        s = max(
            bottlenecks,
            key=lambda t: (_value(by_stage[t], split[t] + 1) - _value(by_stage[t], split[t]), t),
        )
        split[s] += 1
    # Then each stage keeps only what the bottleneck's throughput needs: the rest of the budget
    # would idle (a flat curve, or a stage already faster than the bottleneck).
    top = evaluate(split, by_stage).throughput
    for t in stages:
        split[t] = next(
            (n for n in range(1, split[t] + 1) if _value(by_stage[t], n) >= top - 1e-9), split[t]
        )
    return evaluate(split, by_stage)


def proportional_split(per_consumer: Mapping[str, float], budget: int) -> dict[str, int]:
    """Consumers in proportion to each stage's work per request (1 / its one-consumer rate),
    rounded by largest remainder, at least one each."""
    stages = sorted(per_consumer)
    work = {s: 1.0 / max(per_consumer[s], 1e-12) for s in stages}
    total = sum(work.values())
    raw = {s: max(1.0, budget * work[s] / total) for s in stages}
    split = {s: max(1, math.floor(raw[s])) for s in stages}
    left = budget - sum(split.values())
    for s in sorted(stages, key=lambda t: raw[t] - math.floor(raw[t]), reverse=True):
        if left <= 0:
            break
        split[s] += 1
        left -= 1
    while sum(split.values()) > budget:
        s = max((t for t in stages if split[t] > 1), key=lambda t: split[t])
        split[s] -= 1
    return split
