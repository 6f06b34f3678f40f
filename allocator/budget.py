"""One core budget for every service: who gets consumers when there are not enough.

Each service's own `Decider` says what its stages want (``desired``); this pure function splits a
budget of consumers (one consumer = one worker process = about one core) among the services by
priority, and says which services must shed at their edge and at what admission rate.

The rule, as it is table- and property-tested (tests/unit/allocator/test_budget.py):

- A service's **need** per stage is the larger of what its decider wants and what the rate
  offered at its edge needs at the stage's measured service rate and the utilisation target,
  ``ceil(offered / (service rate x utilisation))``. The second term matters once a service is shed:
  its later stages then see only the admitted share and their deciders size them for it, so
  without it the service would look as if it fitted, be unshed, overflow and be shed again.
- Priorities are served from the highest down. A priority level whose needs fit in what is left
  has its needs **reserved** and is granted what its deciders want now (at least one consumer per
  stage with a need), so the deciders' hysteresis is kept and no lower service takes the cores
  the higher one will need.
- A level that does not fit takes everything left, and no lower level gets anything: cores are
  never given to a lower service while a higher one is short. Inside the level:
  1. a service runs only with every stage at one consumer at least: services are admitted to run
     largest need first while their stages' one consumer each fits (ties by name);
  2. a service that cannot run gets one consumer for its edge, if one is left, so that every
     request it is offered is still answered (``shed``) rather than left waiting
     (``edge_only``); with none left it is ``starved`` (its requests wait in its topic);
  3. what is left goes to the running services' edges up to their need first (an edge sees every
     offered request, shed or not), then to their other stages, one consumer at a time to the
     stage with the smallest share of its need met (so equal priorities share in proportion to
     need), a stage that already runs more consumers than granted first (a running consumer is
     kept rather than another started).
- A service granted less than its need is given an **admission rate**: what its granted consumers
  complete at the utilisation target, ``min over its later stages of granted x service rate x
  utilisation`` (its edge handles every request, shed or not, so the edge bounds nothing a limit
  could fix), unless that covers its offered rate; 0 for ``edge_only`` and ``starved`` (admit
  nothing). Without a budget (None) every service gets what its deciders want and none is shed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

BudgetReason = Literal["unlimited", "within_budget", "short", "edge_only", "starved"]
"""``within_budget``: its need is reserved; ``short``: it runs with less than its need (and may
be shed); ``edge_only``: only its edge runs, shedding every request; ``starved``: nothing runs."""


@dataclass(frozen=True, slots=True)
class StageAsk:
    """One stage of a service as its decider sees it this look."""

    name: str
    desired: int
    """Consumers the service's decider wants for the stage now."""
    current: int = 0
    """Consumers running now (starting ones included)."""
    service_rate: float | None = None
    """One consumer's events per busy second (smoothed), None while unmeasured."""
    partitions: int | None = None
    """More consumers than partitions would idle: the need is capped here (not below desired)."""


@dataclass(frozen=True, slots=True)
class ServiceAsk:
    """A service's claim on the budget: its stages in pipeline order, the first its edge."""

    name: str
    priority: int
    stages: tuple[StageAsk, ...]
    offered_rate: float = 0.0
    """Requests/s offered at its edge: measured, or the forecast when that is higher."""


@dataclass(frozen=True, slots=True)
class ServiceGrant:
    name: str
    priority: int
    need: dict[str, int]
    granted: dict[str, int]
    reason: BudgetReason
    admission: float | None = None
    """Requests/s its edge may admit; None: not limited by the budget; 0.0: admit nothing."""

    @property
    def met(self) -> float:
        """The share of its need set aside for it: 1 when its need fit (reserved, even if its
        deciders want less now), else what it was granted over what it needs."""
        total = sum(self.need.values())
        if self.reason in ("unlimited", "within_budget") or total == 0:
            return 1.0
        return sum(self.granted.values()) / total

    @property
    def consumers(self) -> int:
        return sum(self.granted.values())


@dataclass(frozen=True, slots=True)
class BudgetSplit:
    budget: int | None
    services: tuple[ServiceGrant, ...]
    """In the order the services were given."""

    @property
    def granted(self) -> int:
        return sum(g.consumers for g in self.services)

    def of(self, name: str) -> ServiceGrant:
        for g in self.services:
            if g.name == name:
                return g
        raise KeyError(name)


def stage_need(stage: StageAsk, offered: float, utilisation: float) -> int:
    """What ``stage`` needs to serve everything offered at the edge: at least its desired."""
    need = max(stage.desired, 0)
    if stage.service_rate is not None and stage.service_rate > 0 and offered > 0:
        full = math.ceil(offered / (stage.service_rate * utilisation) - 1e-9)
        if stage.partitions is not None:
            full = min(full, stage.partitions)
        need = max(need, full)
    return need


def split_budget(
    services: Sequence[ServiceAsk], budget: int | None, *, utilisation: float = 0.75
) -> BudgetSplit:
    """Consumers per (service, stage) within ``budget`` (None: unlimited), and the admission
    rate of every service that did not get its need. Pure; see the module's docstring."""
    if budget is not None and budget < 0:
        raise ValueError(f"budget: {budget} < 0")
    if not 0.0 < utilisation <= 1.0:
        raise ValueError(f"utilisation: {utilisation} not in (0, 1]")
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ValueError(f"services named twice: {names}")
    needs = [
        {st.name: stage_need(st, s.offered_rate, utilisation) for st in s.stages} for s in services
    ]
    if budget is None:
        return BudgetSplit(
            None,
            tuple(
                ServiceGrant(
                    s.name,
                    s.priority,
                    needs[i],
                    {st.name: max(st.desired, 0) for st in s.stages},
                    "unlimited",
                )
                for i, s in enumerate(services)
            ),
        )
    granted: list[dict[str, int]] = [dict.fromkeys(n, 0) for n in needs]
    reasons: list[BudgetReason] = ["starved"] * len(services)
    left = budget
    short_above = False
    for level in sorted({s.priority for s in services}, reverse=True):
        members = [i for i, s in enumerate(services) if s.priority == level]
        if short_above:
            continue  # starved: a higher level is short
        total = sum(sum(needs[i].values()) for i in members)
        if total <= left:
            for i in members:
                for st in services[i].stages:
                    n = needs[i][st.name]
                    granted[i][st.name] = min(max(st.desired, min(n, 1)), n)
                reasons[i] = "within_budget"
            left -= total
            continue
        short_above = True
        _share_short_level(services, needs, members, left, granted=granted, reasons=reasons)
        left = 0
    out = []
    for i, s in enumerate(services):
        reason = reasons[i]
        admission: float | None = None
        if reason == "short":
            admission = _admission(s, granted[i], utilisation)
        elif reason in ("edge_only", "starved"):
            admission = 0.0
        out.append(ServiceGrant(s.name, s.priority, needs[i], granted[i], reason, admission))
    return BudgetSplit(budget, tuple(out))


def _share_short_level(
    services: Sequence[ServiceAsk],
    needs: list[dict[str, int]],
    members: list[int],
    left: int,
    *,
    granted: list[dict[str, int]],
    reasons: list[BudgetReason],
) -> None:
    """Split ``left`` consumers among one priority level whose needs exceed it (in place)."""
    order = sorted(members, key=lambda i: (-sum(needs[i].values()), services[i].name))
    running = []
    for i in order:  # 1. every stage one consumer, largest service first, while it fits
        floor = sum(1 for n in needs[i].values() if n > 0)
        if floor <= left:
            for name, n in needs[i].items():
                granted[i][name] = min(n, 1)
            left -= floor
            running.append(i)
    for i in order:  # 2. a service that cannot run answers its requests 'shed' from its edge
        if i in running:
            continue
        edge = services[i].stages[0].name if services[i].stages else None
        if edge is not None and left >= 1 and needs[i][edge] > 0:
            granted[i][edge] = 1
            left -= 1
            reasons[i] = "edge_only"
        else:
            reasons[i] = "starved"
    for edges in (True, False):  # 3. edges to their need, then the rest by share of need met
        heap: list[tuple[float, int, int, int]] = []
        for i in running:
            for j, st in enumerate(services[i].stages):
                if (j == 0) == edges and granted[i][st.name] < needs[i][st.name]:
                    heapq.heappush(heap, _key(st, granted[i][st.name], needs[i][st.name], i, j))
        while left > 0 and heap:
            _, _, i, j = heapq.heappop(heap)
            st = services[i].stages[j]
            granted[i][st.name] += 1
            left -= 1
            if granted[i][st.name] < needs[i][st.name]:
                heapq.heappush(heap, _key(st, granted[i][st.name], needs[i][st.name], i, j))
    for i in running:
        full = all(granted[i][k] >= n for k, n in needs[i].items())
        reasons[i] = "within_budget" if full else "short"


def _key(st: StageAsk, granted: int, need: int, i: int, j: int) -> tuple[float, int, int, int]:
    """Smallest share of need met first; then a stage whose running consumer would be kept."""
    return (granted / need, 0 if st.current > granted else 1, i, j)


def _admission(s: ServiceAsk, granted: dict[str, int], utilisation: float) -> float | None:
    """What the granted consumers complete in time; None when that covers the offer (or no stage
    is measured yet: nothing to size a limit by)."""
    later = s.stages[1:] or s.stages  # the edge handles shed requests too: it is no limit
    caps = [
        granted[st.name] * st.service_rate * utilisation
        for st in later
        if st.service_rate is not None and st.service_rate > 0
    ]
    if not caps:
        return None
    capacity = min(caps)
    return None if capacity >= s.offered_rate else capacity
