"""The policies the simulator compares, each a `simulator.Controller`:

- `StaticPeak`: enough consumers for the trace's peak at a utilisation, all the time;
- `Keda`: KEDA's Kafka scaler through the HPA (`baselines.keda_step`), Kafka's default assignor;
- `Jizhi`: the allocator's `Decider` (consumers, partitions, shedding) and its sticky balanced
  assignment: the same code the reconcile loop runs. Its forecast reads a `History` on disk in
  which the trace's previous day was recorded as the loop records looks, through the same
  `History.forecast` and `forecast_rate` as the loop.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from allocator.baselines import KedaOptions, KedaState, keda_step, keda_total_lag, static_peak
from allocator.budget import ServiceAsk, StageAsk, split_budget
from allocator.decide import AllocatorOptions, Decider, Decisions, StageInput, forecast_rate
from allocator.history import DAY_S, History, Record
from allocator.policy import assign_indices
from allocator.simulator import IntArray, PipelineModel, Plan, View, round_robin
from allocator.traces import FloatArray, Trace


@dataclass
class StaticPeak:
    utilisation: float = 0.75
    control_s: float = 3600.0
    name: str = "static peak"
    _plan: Plan | None = None

    def start(self, model: PipelineModel, trace: Trace) -> Plan:
        peak = float(trace.rate.max())
        self._plan = Plan(
            tuple(
                static_peak(peak, s.service_rate, self.utilisation, model.partitions)
                for s in model.stages
            ),
            tuple(model.partitions for _ in model.stages),
        )
        return self._plan

    def control(self, view: View) -> Plan:
        assert self._plan is not None
        return self._plan

    def assign(self, stage: int, rates: FloatArray, consumers: int, previous: IntArray) -> IntArray:
        return round_robin(consumers, len(rates))


@dataclass
class Keda:
    """One ScaledObject per stage; ``utilisation`` sets each stage's lagThreshold to the lag one
    consumer shows at that utilisation (its service rate x the commit lag), which is how one
    would tune the threshold to a deadline."""

    utilisation: float = 0.7
    control_s: float = 30.0
    """KEDA's pollingInterval (default 30 s)."""
    name: str = "KEDA"
    options: KedaOptions = field(default_factory=KedaOptions)
    _states: list[KedaState] = field(default_factory=list)
    _thresholds: list[float] = field(default_factory=list)

    def start(self, model: PipelineModel, trace: Trace) -> Plan:
        self._thresholds = [
            s.service_rate * model.commit_lag_s * self.utilisation for s in model.stages
        ]
        first = [
            static_peak(float(trace.rate[0]), s.service_rate, self.utilisation, model.partitions)
            for s in model.stages
        ]
        self._states = [KedaState(n, ((0.0, n),)) for n in first]
        return Plan(tuple(first), tuple(model.partitions for _ in model.stages))

    def control(self, view: View) -> Plan:
        out = []
        for i, st in enumerate(view.stages):
            opts = KedaOptions(
                lag_threshold=self._thresholds[i],
                allow_idle_consumers=self.options.allow_idle_consumers,
                min_replicas=self.options.min_replicas,
                stabilization_s=self.options.stabilization_s,
            )
            total = keda_total_lag(st.lags, st.partitions, opts)
            self._states[i] = keda_step(self._states[i], total, st.partitions, view.now, opts)
            out.append(self._states[i].replicas)
        return Plan(tuple(out), tuple(s.partitions for s in view.stages))

    def assign(self, stage: int, rates: FloatArray, consumers: int, previous: IntArray) -> IntArray:
        return round_robin(consumers, len(rates))


SIM_DAY = dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()
"""Midnight of the simulated day (any date: only the time of day matters)."""


@dataclass
class Jizhi:
    options: AllocatorOptions = field(default_factory=AllocatorOptions)
    control_s: float = 10.0
    forecast: bool = True
    name: str = "jizhi"
    _decider: Decider | None = None
    _history: History | None = None
    _dir: tempfile.TemporaryDirectory[str] | None = None
    _start_s: float = 0.0
    forecast_rate: float | None = None
    """The forecast of the last look (None: none)."""

    def start(self, model: PipelineModel, trace: Trace) -> Plan:
        self._decider = Decider(self.options)
        self._start_s = trace.start_s
        if self.forecast:
            self._dir = tempfile.TemporaryDirectory(prefix="jizhi-sim-history-")
            self._history = History(Path(self._dir.name), days=1)
            self._history.record(self._yesterday(trace))
        first = [
            static_peak(
                float(trace.rate[0]),
                s.service_rate,
                self.options.scaling.target_utilisation,
                model.partitions,
            )
            for s in model.stages
        ]
        return Plan(tuple(first), tuple(model.partitions for _ in model.stages))

    def _yesterday(self, trace: Trace) -> list[Record]:
        """The trace's previous day as the loop would have recorded it: ingest's arrival rate
        every look."""
        every = max(1, round(self.control_s / trace.dt))
        t0 = SIM_DAY - DAY_S + trace.start_s
        return [
            Record(t0 + i * trace.dt, "ingest", 0, float(r), float(r), 0.0)
            for i, r in enumerate(trace.history)
            if i % every == 0
        ]

    def control(self, view: View) -> Plan:
        decisions = self.decide(view)
        return Plan(
            tuple(d.consumers.desired for d in decisions.stages),
            tuple(d.partitions for d in decisions.stages),
            decisions.shed.rate if decisions.shed is not None else 0.0,
        )

    def decide(self, view: View) -> Decisions:
        """The decider's decisions for this look (what `control` turns into a plan)."""
        assert self._decider is not None
        ahead = None
        if self._history is not None:
            then, later = self._history.forecast(
                "ingest", SIM_DAY + self._start_s + view.now, self.options.forecast_lead_s
            )
            ahead = forecast_rate(then, later, view.offered_rate, self.options.forecast_band)
        self.forecast_rate = ahead
        return self._decider.decide(
            view.now,
            [
                StageInput(
                    s.name,
                    s.partitions,
                    s.provisioned,
                    s.arrival_rate,
                    float(s.lags.sum()),
                    s.service_rate,
                )
                for s in view.stages
            ],
            forecast=ahead,
            p99_s=view.p99_s,
            deadline_s=view.deadline_s,
            completed_rate=view.completed_rate,
            offered_rate=view.offered_rate,
        )

    @property
    def decider(self) -> Decider:
        assert self._decider is not None
        return self._decider

    def assign(self, stage: int, rates: FloatArray, consumers: int, previous: IntArray) -> IntArray:
        return assign_indices(rates, consumers, previous, balance=self.options.balance)


ADMIT_NOTHING = 1e-3
"""As the loop publishes "admit nothing" (`allocator.reconcile.ADMIT_NOTHING`)."""


@dataclass
class JizhiFleet:
    """Several pipelines, one `Jizhi` each (its own decider and forecast), under one core
    budget: every look, each decides alone, then `split_budget` grants consumers by priority
    and sets the admission of the ones it sheds, as `allocator.fleet.Fleet` does."""

    members: list[Jizhi]
    priorities: list[int]
    budget: int | None
    names: list[str] = field(default_factory=list)
    grants: list[list[str]] = field(default_factory=list)
    """Per look, each member's budget reason (for the figures)."""

    def control(self, views: Sequence[View]) -> list[Plan]:
        names = self.names or [f"p{i}" for i in range(len(self.members))]
        decided = [m.decide(v) for m, v in zip(self.members, views, strict=True)]
        asks = [
            ServiceAsk(
                name,
                prio,
                tuple(
                    StageAsk(
                        d.name,
                        d.consumers.desired,
                        sv.provisioned,
                        m.decider.service_rate(d.name),
                        sv.partitions,
                    )
                    for d, sv in zip(dec.stages, v.stages, strict=True)
                ),
                max(v.offered_rate, m.forecast_rate or 0.0),
            )
            for name, prio, m, v, dec in zip(
                names, self.priorities, self.members, views, decided, strict=True
            )
        ]
        u = self.members[0].options.scaling.target_utilisation
        split = split_budget(asks, self.budget, utilisation=u)
        self.grants.append([g.reason for g in split.services])
        plans = []
        for dec, grant in zip(decided, split.services, strict=True):
            own = dec.shed.rate if dec.shed is not None else 0.0
            admission = own
            if grant.admission is not None:
                limit = max(grant.admission, ADMIT_NOTHING)
                admission = limit if own <= 0 else min(own, limit)
            plans.append(
                Plan(
                    tuple(grant.granted[d.name] for d in dec.stages),
                    tuple(d.partitions for d in dec.stages),
                    admission,
                )
            )
        return plans
