"""The allocator's whole decision for one look, composed from the pure policies.

`Decider` is what both the reconcile loop and the simulator call, so the figures the simulator
prints are the figures of the code that runs. It keeps only the policies' small states (cool-down
times, the stabilisation window, the admission level) between looks; everything observed comes in
fresh each time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from allocator.policy import (
    Assignment,
    ConsumerDecision,
    PartitionOptions,
    PartitionReason,
    ScalerState,
    ScalingOptions,
    ShedDecision,
    ShedOptions,
    ShedState,
    StageLoad,
    assign_partitions,
    decide_consumers,
    partitions_needed,
    shed_step,
)


@dataclass(frozen=True, slots=True)
class AllocatorOptions:
    """Every knob of the allocator; the edge cases are named here, not buried in code."""

    scaling: ScalingOptions = field(default_factory=ScalingOptions)
    partitions: PartitionOptions = field(default_factory=PartitionOptions)
    shed: ShedOptions = field(default_factory=ShedOptions)
    shedding: bool = True
    balance: float = 1.2
    """Reassign partitions when the busiest consumer carries more than this times the mean."""
    forecast_lead_s: float = 120.0
    """How far ahead the forecast from history looks (at least a consumer's start-up time)."""
    forecast_band: tuple[float, float] = (0.8, 1.25)
    """A forecast is scaled by today's level against history, clipped to this band."""
    service_smoothing: float = 0.2
    """Weight of the newest service-rate measurement in its moving average. A consumer's
    capacity changes slowly, but one look's measurement is noisy, and the scale-down window
    keeps the highest need it saw: unsmoothed, a 5% noise held ~3% extra consumers."""

    def validate(self) -> None:
        self.scaling.validate()
        if self.balance < 1.0:
            raise ValueError("balance: must be >= 1.0")
        if not 0.0 < self.service_smoothing <= 1.0:
            raise ValueError("service_smoothing: must be in (0, 1]")
        if self.partitions.headroom < 1.0 or self.partitions.max_partitions < 1:
            raise ValueError("partitions: headroom >= 1 and max_partitions >= 1")


@dataclass(frozen=True, slots=True)
class StageInput:
    """One stage as observed at this look."""

    name: str
    partitions: int
    consumers: int
    arrival_rate: float
    lag: float
    service_rate: float | None


@dataclass(frozen=True, slots=True)
class StageDecision:
    name: str
    consumers: ConsumerDecision
    partitions: int
    partition_reason: PartitionReason


@dataclass(frozen=True, slots=True)
class Decisions:
    stages: tuple[StageDecision, ...]
    shed: ShedDecision | None


def forecast_rate(
    history_now: float | None,
    history_ahead: float | None,
    observed_now: float,
    band: tuple[float, float],
) -> float | None:
    """The rate history expects within the look-ahead, scaled by how today compares with the
    recorded day (clipped, so a quiet morning does not cancel the evening wave)."""
    if history_ahead is None or history_now is None or history_now <= 0:
        return None
    level = min(max(observed_now / history_now, band[0]), band[1])
    return history_ahead * level


@dataclass
class Decider:
    options: AllocatorOptions = field(default_factory=AllocatorOptions)
    _scalers: dict[str, ScalerState] = field(default_factory=dict)
    _shed: ShedState = field(default_factory=ShedState)
    _last: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Per stage: (time, arrival rate, smoothed trend) of the previous look."""
    _service: dict[str, float] = field(default_factory=dict)
    """Per stage: the smoothed per-consumer service rate."""

    @property
    def admission_rate(self) -> float:
        return self._shed.rate

    def decide(
        self,
        now: float,
        stages: Sequence[StageInput],
        *,
        forecast: float | None = None,
        p99_s: float | None = None,
        deadline_s: float | None = None,
        completed_rate: float = 0.0,
        offered_rate: float = 0.0,
    ) -> Decisions:
        """``completed_rate``: requests the pipeline finished per second lately (for shedding)."""
        out = []
        for st in stages:
            state = self._scalers.get(st.name) or ScalerState(consumers=st.consumers)
            load = StageLoad(
                arrival_rate=st.arrival_rate,
                lag=st.lag,
                service_rate=self._service_rate(st.name, st.service_rate),
                partitions=st.partitions,
                forecast_rate=forecast,
                trend=self._trend(st.name, now, st.arrival_rate),
            )
            state, decision = decide_consumers(state, load, now, self.options.scaling)
            self._scalers[st.name] = state
            parts, why = partitions_needed(st.partitions, decision.need, self.options.partitions)
            out.append(StageDecision(st.name, decision, parts, why))
        shed: ShedDecision | None = None
        # What the pipeline can complete: its slowest stage at full speed (falling back to what
        # it did complete while a stage is unmeasured).
        measured = [
            st.consumers * self._service[st.name] for st in stages if st.name in self._service
        ]
        capacity = min(measured) if len(measured) == len(stages) and measured else completed_rate
        if self.options.shedding and deadline_s is not None:
            self._shed, shed = shed_step(
                self._shed,
                p99_s=p99_s,
                deadline_s=deadline_s,
                capacity=capacity,
                arrival=offered_rate,
                opts=self.options.shed,
            )
        return Decisions(tuple(out), shed)

    def service_rate(self, stage: str) -> float | None:
        """The smoothed per-consumer service rate of ``stage``, None until measured."""
        return self._service.get(stage)

    def _service_rate(self, stage: str, measured: float | None) -> float | None:
        """A moving average of the measurements; the last average while none comes."""
        old = self._service.get(stage)
        if measured is None or measured <= 0:
            return old
        a = self.options.service_smoothing
        new = measured if old is None else (1.0 - a) * old + a * measured
        self._service[stage] = new
        return new

    def _trend(self, stage: str, now: float, rate: float) -> float:
        """The arrival rate's slope, smoothed over a few looks so noise does not drive it."""
        last = self._last.get(stage)
        trend = 0.0
        if last is not None and now > last[0]:
            slope = (rate - last[1]) / (now - last[0])
            trend = 0.5 * last[2] + 0.5 * slope
        self._last[stage] = (now, rate, trend)
        return trend

    def assign(
        self,
        rates: Sequence[float],
        consumers: Sequence[str],
        previous: dict[int, str] | None,
    ) -> Assignment:
        return assign_partitions(rates, consumers, previous, balance=self.options.balance)
