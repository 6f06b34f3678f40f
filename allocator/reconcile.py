"""The reconcile loop: observe, decide, act on the difference, say when to look again.

Level-based (controller-runtime's habit): every look re-reads offsets and worker metrics, asks the
actuator what actually runs, computes the desired state with the pure policies (`Decider`), and
acts only where desired and actual differ. Nothing is remembered but the policies' small state
and the previous look's counters (for rates), so a restarted allocator converges the same way.

What it acts on:
- consumers per stage, through the actuator;
- partitions, by growing a stage's input topic (``grow_partitions``; off by default, since growing
  moves keys: see docs/allocator.md);
- the ingest admission rate, through ``publish_admission`` (a callback: the worker side applies
  it with `stages.admission.Admission.set_rate`);
- the forecast: with a ``history``, every look is recorded, and the ingest rate the recorded days
  saw at this time of day (and within ``forecast_lead_s``) is passed to the decider, so a wave that
  comes every evening is met before its lag shows;
- the partition assignment, through ``plans`` (named workers only): a load-balanced plan is
  published when a stage's named consumers change or the standing plan carries the busiest
  consumer over ``balance`` x the mean at the measured per-partition rates; claims of instances
  that no longer run are deleted so their partitions are not blocked.

Every decision is logged with its reason and counted in ``jizhi_allocator_decisions_total``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from allocator import metrics
from allocator.actuators import Actuator
from allocator.budget import ServiceAsk, ServiceGrant, StageAsk
from allocator.decide import Decider, Decisions, StageInput, forecast_rate
from allocator.errors import ActuatorError, ObserveError
from allocator.history import History, Record
from allocator.observe import Observer, PipelineRates, Rates, StageRates, WorkerStats
from allocator.policy import ConsumerDecision, ShedDecision, ShedReason

log = logging.getLogger(__name__)

Scraper = Callable[[Sequence[str]], WorkerStats]
PartitionGrower = Callable[[str, int], None]
"""(stage, new partition count) -> None: grows the stage's input topic."""


ADMIT_NOTHING = 1e-3
"""Requests/s published for "admit nothing": on the control topic 0 means unlimited, so a
service the budget sheds entirely is given one request per thousand seconds."""
REPUBLISH = 0.05
"""A budget's admission rate is republished only when it moves by more than this share: the
smoothed service rates move it a little at every look."""


@dataclass(frozen=True, slots=True)
class Look:
    """What one reconcile saw and did; ``requeue_after`` says when to look again."""

    at: float
    rates: tuple[StageRates, ...]
    actual: dict[str, int]
    decisions: Decisions | None
    acted: tuple[str, ...]
    requeue_after: float
    error: str | None = None
    budget: ServiceGrant | None = None
    """What the core budget granted the service at this look (None: no budget)."""
    admission: float = 0.0
    """The admission limit in force after this look, requests/s (0 = unlimited)."""


@dataclass(frozen=True, slots=True)
class Seen:
    """One look's observations and the decider's wishes, before acting: what the budget across
    services (`allocator.fleet.Fleet`) arbitrates between."""

    at: float
    rates: tuple[StageRates, ...]
    by_stage: dict[str, StageRates]
    actual: dict[str, int]
    answered: PipelineRates
    decisions: Decisions
    offered: float
    """Requests/s offered at the edge: its arrival rate, or the forecast when that is higher."""


class Plans(Protocol):
    """Where assignment plans go (`allocator.actuators.topics.PlanPublisher` on Kafka)."""

    def __call__(self, stage: str, owners: Mapping[str, list[int]]) -> int: ...

    def forget(self, stage: str, instance: str) -> None: ...


@dataclass
class Reconciler:
    pipeline: str
    stages: tuple[str, ...]
    observer: Observer
    actuator: Actuator
    decider: Decider = field(default_factory=Decider)
    scrape: Scraper | None = None
    deadline_s: float | None = None
    grow_partitions: PartitionGrower | None = None
    publish_admission: Callable[[float], None] | None = None
    plans: Plans | None = None
    instances: Callable[[str], list[str]] | None = None
    """The named consumers of a stage (workers started with ``--instance``); plans need them."""
    history: History | None = None
    """Where looks are recorded and the forecast read from; None: neither."""
    dry_run: bool = False
    interval_s: float = 10.0
    clock: Callable[[], float] = time.time
    _rates: Rates = field(default_factory=Rates)
    _owners: dict[str, dict[int, str]] = field(default_factory=dict)
    _measuring: bool = False

    _admission: float = 0.0
    """The admission limit last published (0 = unlimited)."""
    _budget_limited: bool = False
    _budget_reason: str | None = None
    _capped: set[str] = field(default_factory=set)

    def reconcile(self) -> Look:
        """One look; never raises for a retriable failure (it is logged, counted and retried)."""
        seen = self.observe()
        return seen if isinstance(seen, Look) else self.act(seen)

    def observe(self) -> Seen | Look:
        """Observe and decide, acting on nothing: a `Seen`, or a `Look` carrying the retriable
        error that stopped it."""
        now = self.clock()
        try:
            offsets = self.observer.offsets()
            actual = {s: self.actuator.actual(s) for s in self.stages}
        except (ObserveError, ActuatorError) as exc:
            metrics.ERRORS.labels(self.pipeline, "observe", str(exc.retriable).lower()).inc()
            if not exc.retriable:
                raise
            log.warning("observe failed, retrying in %.0f s: %s", self.interval_s, exc)
            return Look(now, (), {}, None, (), self.interval_s, str(exc))
        stats = self._scrape()
        rates, answered = self._rates.update(offsets, stats)
        by_stage = {r.stage: r for r in rates}
        inputs = [
            StageInput(
                s,
                by_stage[s].partitions,
                actual.get(s, 0),
                by_stage[s].arrival_rate,
                by_stage[s].lag,
                by_stage[s].service_rate,
            )
            for s in self.stages
            if s in by_stage
        ]
        ingest = by_stage.get(self.stages[0]) if self.stages else None
        forecast = self._forecast(now, ingest)
        offered = ingest.arrival_rate if ingest is not None else 0.0
        decisions = self.decider.decide(
            now,
            inputs,
            forecast=forecast,
            p99_s=answered.p99_s,
            deadline_s=self.deadline_s,
            completed_rate=by_stage[self.stages[-1]].commit_rate
            if self.stages and self.stages[-1] in by_stage
            else 0.0,
            offered_rate=offered,
        )
        return Seen(
            now, tuple(rates), by_stage, actual, answered, decisions, max(offered, forecast or 0.0)
        )

    def ask(self, seen: Seen, priority: int) -> ServiceAsk:
        """This service's claim on a core budget (`allocator.budget.split_budget`)."""
        return ServiceAsk(
            self.pipeline,
            priority,
            tuple(
                StageAsk(
                    d.name,
                    d.consumers.desired,
                    seen.actual.get(d.name, 0),
                    self.decider.service_rate(d.name),
                    seen.by_stage[d.name].partitions,
                )
                for d in seen.decisions.stages
            ),
            seen.offered,
        )

    def act(self, seen: Seen, grant: ServiceGrant | None = None) -> Look:
        """Act on the difference between ``seen`` and what should run: the decider's wishes, or
        what ``grant`` (the core budget's share for this service) allows of them."""
        decisions = self._granted(seen.decisions, seen.actual, grant)
        acted = self._act(decisions, seen.actual, seen.by_stage, grant)
        self._export(decisions, seen.actual, seen.by_stage, seen.answered, grant)
        self._record(seen.at, seen.actual, seen.rates)
        return Look(
            seen.at,
            seen.rates,
            seen.actual,
            decisions,
            tuple(acted),
            self._requeue(decisions),
            budget=grant,
            admission=self._admission,
        )

    def _granted(
        self, decisions: Decisions, actual: Mapping[str, int], grant: ServiceGrant | None
    ) -> Decisions:
        """The decisions with each stage's consumers as the budget grants them, the reason
        saying when that is not what the decider wanted."""
        if grant is None:
            return decisions
        out = []
        capped = set()
        for d in decisions.stages:
            c = d.consumers
            n = grant.granted.get(d.name, c.desired)
            if n < c.desired:
                c = ConsumerDecision(n, "capped_by_budget", c.need)
                capped.add(d.name)
            elif n > c.desired:
                c = ConsumerDecision(n, "sized_for_offered", c.need)
            elif d.name in self._capped and n != actual.get(d.name, 0):
                c = ConsumerDecision(n, "budget_released", c.need)
            out.append(replace(d, consumers=c))
        self._capped = capped
        return replace(decisions, stages=tuple(out))

    def _forecast(self, now: float, ingest: StageRates | None) -> float | None:
        """The rate history expects soon, or None (no history, or nothing recorded then)."""
        if self.history is None or ingest is None:
            return None
        opts = self.decider.options
        try:
            then, ahead = self.history.forecast(ingest.stage, now, opts.forecast_lead_s)
        except OSError as exc:
            metrics.ERRORS.labels(self.pipeline, "history", "true").inc()
            log.warning("reading history failed, no forecast this look: %s", exc)
            return None
        return forecast_rate(then, ahead, ingest.arrival_rate, opts.forecast_band)

    def _record(self, now: float, actual: Mapping[str, int], rates: Sequence[StageRates]) -> None:
        if self.history is None:
            return
        if not self._measuring:  # the first look has offsets but no rates yet: not a sample
            self._measuring = True
            return
        try:
            self.history.record(
                [
                    Record(
                        now,
                        r.stage,
                        actual.get(r.stage, 0),
                        r.arrival_rate,
                        r.commit_rate,
                        r.lag,
                        self.decider.service_rate(r.stage),
                    )
                    for r in rates
                ]
            )
        except OSError as exc:  # a full disk must not stop the scaling
            metrics.ERRORS.labels(self.pipeline, "history", "true").inc()
            log.warning("recording history failed: %s", exc)

    def _scrape(self) -> WorkerStats | None:
        """The workers' counters, or None for this look: they refine the service rate, but the
        offsets alone are enough to decide on, so a worker answering garbage while it is killed
        (a truncated exposition, an HTTP error) must not stop the loop. The next good scrape
        measures across both intervals."""
        if self.scrape is None:
            return None
        try:
            return self.scrape(self.actuator.endpoints())
        except Exception as exc:  # any failure only skips a refinement
            metrics.ERRORS.labels(self.pipeline, "scrape", "true").inc()
            log.warning("scraping the workers failed, service rates kept: %r", exc)
            return None

    def _requeue(self, decisions: Decisions) -> float:
        """Look again sooner while something is changing (consumers joining, shedding)."""
        moving = any(d.consumers.reason.startswith("scale_up") for d in decisions.stages)
        shedding = self._admission > 0 or (decisions.shed is not None and decisions.shed.rate > 0)
        return self.interval_s / 2 if moving or shedding else self.interval_s

    def _act(
        self,
        decisions: Decisions,
        actual: dict[str, int],
        rates: dict[str, StageRates],
        grant: ServiceGrant | None = None,
    ) -> list[str]:
        acted = []
        p = self.pipeline
        for d in decisions.stages:
            c = d.consumers
            if d.partitions > rates[d.name].partitions:
                metrics.DECISIONS.labels(p, d.name, "partitions", d.partition_reason).inc()
                log.info(
                    "%s: partitions %d -> %d (%s)",
                    d.name,
                    rates[d.name].partitions,
                    d.partitions,
                    d.partition_reason,
                )
                if self.grow_partitions is not None and not self.dry_run:
                    self.grow_partitions(d.name, d.partitions)
                    acted.append(f"{d.name}:partitions={d.partitions}")
            if c.desired == actual.get(d.name, 0):
                continue
            metrics.DECISIONS.labels(p, d.name, "consumers", c.reason).inc()
            log.info(
                "%s: consumers %d -> %d (%s, need %.2f)",
                d.name,
                actual.get(d.name, 0),
                c.desired,
                c.reason,
                c.need,
            )
            if self.dry_run:
                continue
            try:
                self.actuator.scale(d.name, c.desired)
                acted.append(f"{d.name}:consumers={c.desired}")
            except ActuatorError as exc:
                metrics.ERRORS.labels(p, "act", str(exc.retriable).lower()).inc()
                if not exc.retriable:
                    raise
                log.warning("scaling %s failed, retried next look: %s", d.name, exc)
        for d in decisions.stages:
            done = self._rebalance(d.name, rates[d.name])
            if done:
                acted.append(done)
        if grant is not None and grant.reason != self._budget_reason:
            metrics.DECISIONS.labels(p, self.stages[0], "budget", grant.reason).inc()
            log.info(
                "budget: %s (%d of %d consumers needed)",
                grant.reason,
                grant.consumers,
                sum(grant.need.values()),
            )
            self._budget_reason = grant.reason
        admission = self._admission_change(decisions.shed, grant)
        if admission is not None:
            rate, reason = admission
            if reason == "budget":
                rate = max(rate, ADMIT_NOTHING)  # 0 would mean unlimited
            metrics.DECISIONS.labels(p, self.stages[0], "admission", reason).inc()
            log.info("admission -> %.3g req/s (%s)", rate, reason)
            if self.publish_admission is not None and not self.dry_run:
                self.publish_admission(rate)
                acted.append(f"admission={rate:.3g}")
            self._admission = rate
        return acted

    def _admission_change(
        self, shed: ShedDecision | None, grant: ServiceGrant | None
    ) -> tuple[float, ShedReason] | None:
        """The admission limit to publish now and why, or None to leave the last one: the
        lower of the shedding controller's and the budget's, the budget's republished only when
        it moved by more than `REPUBLISH` (0 = unlimited on the wire; the budget's "admit
        nothing" goes out as `ADMIT_NOTHING`)."""
        own = self.decider.admission_rate  # the shedding controller's limit, 0 = none
        if grant is None or grant.admission is None:
            if self._budget_limited:
                self._budget_limited = False
                return own, "budget_lifted"
            if shed is not None and shed.reason not in ("unlimited", "no_signal", "hold"):
                return shed.rate, shed.reason
            return None
        rate = grant.admission if own <= 0 else min(own, grant.admission)
        last = self._admission if self._budget_limited else None
        self._budget_limited = True
        if last is not None and abs(rate - last) <= REPUBLISH * max(last, 1.0):
            return None
        return rate, "budget"

    def _rebalance(self, stage: str, r: StageRates) -> str | None:
        """Publish a balanced plan for ``stage`` if its named consumers changed or the standing
        plan is unbalanced at the measured partition rates; the plan moves as few partitions as
        the balance allows (`allocator.policy.assign_partitions` with the previous owners)."""
        if self.plans is None or self.instances is None or not r.partitions:
            return None
        names = sorted(self.instances(stage))
        previous = self._owners.get(stage)
        known = set(previous.values()) if previous else set()
        if not self.dry_run:
            for gone in sorted(known - set(names)):
                self.plans.forget(stage, gone)
        if not names:
            return None
        rates = list(r.partition_rates) + [0.0] * (r.partitions - len(r.partition_rates))
        if previous is not None and known == set(names) and len(previous) == r.partitions:
            loads = dict.fromkeys(names, 0.0)
            for part, owner in previous.items():
                loads[owner] += rates[part]
            mean = sum(loads.values()) / len(loads)
            if mean <= 0 or max(loads.values()) <= self.decider.options.balance * mean:
                return None
            reason = "imbalance"
        else:
            reason = "first_plan" if previous is None else "consumers_changed"
        plan = self.decider.assign(rates, names, previous)
        metrics.DECISIONS.labels(self.pipeline, stage, "assignment", reason).inc()
        log.info(
            "%s: assignment over %d consumers (%s, busiest/mean %.2f, %d moved)",
            stage,
            len(names),
            reason,
            plan.busiest_over_mean(),
            plan.moved,
        )
        if self.dry_run:
            return None
        self.plans(stage, plan.owners)
        self._owners[stage] = {
            part: owner for owner, parts in plan.owners.items() for part in parts
        }
        return f"{stage}:assignment={plan.busiest_over_mean():.2f}"

    def _export(
        self,
        decisions: Decisions,
        actual: dict[str, int],
        rates: dict[str, StageRates],
        answered: PipelineRates,
        grant: ServiceGrant | None = None,
    ) -> None:
        p = self.pipeline
        if grant is not None:
            metrics.BUDGET_MET.labels(p).set(grant.met)
        for d in decisions.stages:
            wanted = grant.need.get(d.name, d.consumers.desired) if grant else None
            metrics.DESIRED.labels(p, d.name).set(
                d.consumers.desired if wanted is None else max(wanted, d.consumers.desired)
            )
            metrics.GRANTED.labels(p, d.name).set(d.consumers.desired)
            metrics.ACTUAL.labels(p, d.name).set(actual.get(d.name, 0))
            metrics.PARTITIONS.labels(p, d.name).set(rates[d.name].partitions)
            metrics.LAG.labels(p, d.name).set(rates[d.name].lag)
            svc = self.decider.service_rate(d.name)
            if svc is not None:
                metrics.SERVICE_RATE.labels(p, d.name).set(svc)
        metrics.SHED_RATE.labels(p).set(answered.shed_rate)
        metrics.EXPIRED_RATE.labels(p).set(answered.expired_rate)
        if answered.p99_s is not None:
            metrics.P99.labels(p).set(answered.p99_s)
        metrics.ADMISSION.labels(p).set(
            self._admission if self._budget_limited else self.decider.admission_rate
        )

    def run(
        self, stop: Callable[[], bool], *, on_look: Callable[[Look], None] | None = None
    ) -> None:
        """Reconcile until ``stop()``; each look says when the next one is due."""
        loop(self.reconcile, stop, on_look)


class Requeued(Protocol):
    @property
    def requeue_after(self) -> float: ...


L = TypeVar("L", bound=Requeued)


def loop(
    reconcile: Callable[[], L], stop: Callable[[], bool], on_look: Callable[[L], None] | None
) -> None:
    """Look, report, sleep until the look's requeue time (waking for ``stop`` every 0.2 s)."""
    while not stop():
        look = reconcile()
        if on_look is not None:
            on_look(look)
        end = time.monotonic() + look.requeue_after
        while not stop() and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
