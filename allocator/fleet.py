"""Several services under one core budget: one `Reconciler` per service, the budget between
their deciders and their actuators.

Each look, every service observes and decides on its own (`Reconciler.observe`); then
`allocator.budget.split_budget` splits the budget by priority (the higher served fully first,
the lower shed at its edge); then each service acts on its grant (`Reconciler.act`), the services
giving consumers back first, so the cores a higher service takes are being freed as it starts
its own. Without a budget each service acts on its own decider's wishes exactly as a lone
`Reconciler` does.

A service whose look failed (a retriable error) keeps what it runs: that is taken off the
budget before the others are split, so a broker hiccup on one service never hands its cores to
another for one look and back the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from allocator import metrics
from allocator.budget import BudgetSplit, split_budget
from allocator.reconcile import Look, Reconciler, Seen, loop

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Service:
    reconciler: Reconciler
    priority: int = 0
    """Higher keeps its cores first when the budget is short."""

    @property
    def name(self) -> str:
        return self.reconciler.pipeline


@dataclass(frozen=True, slots=True)
class FleetLook:
    at: float
    looks: dict[str, Look]
    """Per service (pipeline name), in the order the services were given."""
    split: BudgetSplit | None
    requeue_after: float


@dataclass
class Fleet:
    services: Sequence[Service]
    budget: int | None = None
    """Consumers (one per worker process, about a core each) for every service; None: unlimited."""
    utilisation: float = 0.75
    """The utilisation target the budget sizes needs and admission rates at (the deciders')."""
    clock: Callable[[], float] = time.time
    _running: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a fleet needs services with distinct names, got {names}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"budget: {self.budget} < 0")

    def reconcile(self) -> FleetLook:
        """One look at every service; retriable failures are per-service looks, not raised."""
        now = self.clock()
        seen: dict[str, Seen] = {}
        looks: dict[str, Look] = {}
        for s in self.services:
            got = s.reconciler.observe()
            if isinstance(got, Look):
                looks[s.name] = got
            else:
                seen[s.name] = got
        split: BudgetSplit | None = None
        if self.budget is not None:
            metrics.BUDGET.set(self.budget)
            held = sum(self._running.get(n, 0) for n in looks)  # failed looks keep theirs
            split = split_budget(
                [
                    s.reconciler.ask(seen[s.name], s.priority)
                    for s in self.services
                    if s.name in seen
                ],
                max(0, self.budget - held),
                utilisation=self.utilisation,
            )

        def giving_back(s: Service) -> int:
            if split is None:
                return 0
            return split.of(s.name).consumers - sum(seen[s.name].actual.values())

        for s in sorted((s for s in self.services if s.name in seen), key=giving_back):
            look = s.reconciler.act(seen[s.name], split.of(s.name) if split is not None else None)
            looks[s.name] = look
            self._running[s.name] = sum(
                d.consumers.desired for d in (look.decisions.stages if look.decisions else ())
            )
        ordered = {s.name: looks[s.name] for s in self.services}
        requeue = min(lk.requeue_after for lk in ordered.values())
        return FleetLook(now, ordered, split, requeue)

    def run(
        self, stop: Callable[[], bool], *, on_look: Callable[[FleetLook], None] | None = None
    ) -> None:
        """Reconcile until ``stop()``; each look says when the next one is due."""
        loop(self.reconcile, stop, on_look)
