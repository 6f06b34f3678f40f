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
from dataclasses import dataclass, field
from typing import Protocol

from allocator import metrics
from allocator.actuators import Actuator
from allocator.decide import Decider, Decisions, StageInput, forecast_rate
from allocator.errors import ActuatorError, ObserveError
from allocator.history import History, Record
from allocator.observe import Observer, PipelineRates, Rates, StageRates, WorkerStats

log = logging.getLogger(__name__)

Scraper = Callable[[Sequence[str]], WorkerStats]
PartitionGrower = Callable[[str, int], None]
"""(stage, new partition count) -> None: grows the stage's input topic."""


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

    def reconcile(self) -> Look:
        """One look; never raises for a retriable failure (it is logged, counted and retried)."""
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
        decisions = self.decider.decide(
            now,
            inputs,
            forecast=self._forecast(now, ingest),
            p99_s=answered.p99_s,
            deadline_s=self.deadline_s,
            completed_rate=by_stage[self.stages[-1]].commit_rate
            if self.stages and self.stages[-1] in by_stage
            else 0.0,
            offered_rate=ingest.arrival_rate if ingest is not None else 0.0,
        )
        acted = self._act(decisions, actual, by_stage)
        self._export(decisions, actual, by_stage, answered)
        self._record(now, actual, rates)
        return Look(now, tuple(rates), actual, decisions, tuple(acted), self._requeue(decisions))

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
        shedding = decisions.shed is not None and decisions.shed.rate > 0
        return self.interval_s / 2 if moving or shedding else self.interval_s

    def _act(
        self, decisions: Decisions, actual: dict[str, int], rates: dict[str, StageRates]
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
        shed = decisions.shed
        if shed is not None and shed.reason not in ("unlimited", "no_signal", "hold"):
            metrics.DECISIONS.labels(p, self.stages[0], "admission", shed.reason).inc()
            log.info("admission -> %.0f req/s (%s)", shed.rate, shed.reason)
            if self.publish_admission is not None and not self.dry_run:
                self.publish_admission(shed.rate)
                acted.append(f"admission={shed.rate:.0f}")
        return acted

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
    ) -> None:
        p = self.pipeline
        for d in decisions.stages:
            metrics.DESIRED.labels(p, d.name).set(d.consumers.desired)
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
        metrics.ADMISSION.labels(p).set(self.decider.admission_rate)

    def run(
        self, stop: Callable[[], bool], *, on_look: Callable[[Look], None] | None = None
    ) -> None:
        """Reconcile until ``stop()``; each look says when the next one is due."""
        while not stop():
            look = self.reconcile()
            if on_look is not None:
                on_look(look)
            end = time.monotonic() + look.requeue_after
            while not stop() and time.monotonic() < end:
                time.sleep(min(0.2, max(0.0, end - time.monotonic())))
