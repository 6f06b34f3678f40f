"""A fluid model of a jizhi pipeline, vectorized with numpy, that replays a traffic trace at
scales one machine cannot hold (10^5-10^8 req/s, thousands of partitions) through the same policy
code the reconcile loop runs.

The model, per time step ``dt``, for every stage and partition at once:

- a stage's inflow is the previous stage's output of the step before (ingest's is the admitted
  trace rate); it splits over partitions by the key groups' shares (``group % partitions``);
- each ready consumer serves its partitions' backlog at its measured service rate, shared in
  proportion to their backlog; consumers being started count as cost but serve nothing until
  ``startup_s`` has passed, and they get partitions only once ready;
- a request's latency in a stage is its consumer's backlog over the consumer's rate, plus the
  micro-batch time inflated by queueing, ``batch_s x (1 + rho / (2 (1 - rho)))`` (an M/D/1-like
  wait at utilisation ``rho``), plus a transit ``hop_s``; its end-to-end latency is the sum over
  stages along its key's partitions, compared with the deadline.

The lag a controller observes is the backlog plus what consumers hold uncommitted
(``commit_lag_s`` of arrivals), as a committed-offset lag would show.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from allocator.traces import KEY_GROUPS, FloatArray, Trace

IntArray = npt.NDArray[np.int64]
AssignMode = Literal["balanced", "round_robin"]


@dataclass(frozen=True, slots=True)
class StageModel:
    name: str
    service_rate: float
    """Events/s one consumer completes while busy (measured)."""
    batch_s: float
    """Time of one micro-batch: the latency floor of the stage (measured)."""


@dataclass(frozen=True, slots=True)
class PipelineModel:
    stages: tuple[StageModel, ...]
    deadline_s: float = 0.2
    partitions: int = 256
    """Initial partitions of every stage's input topic."""
    max_partitions: int = 16_384
    startup_s: float = 10.0
    """From asking for a consumer to it owning partitions (process start, join, rebalance)."""
    hop_s: float = 0.004
    """Transit per stage: produce linger, fetch."""
    commit_lag_s: float = 0.6
    """Committed offsets trail consumption by about this much (auto-commit every 1 s)."""


@dataclass(frozen=True, slots=True)
class StageView:
    """What a controller can observe of one stage at a look."""

    name: str
    partitions: int
    ready: int
    provisioned: int
    arrival_rate: float
    """Mean inflow (events/s) since the last look."""
    partition_rates: FloatArray
    lags: FloatArray
    """Per-partition committed-offset lag (events)."""
    service_rate: float
    """Measured per-consumer busy rate (with measurement noise)."""


@dataclass(frozen=True, slots=True)
class View:
    now: float
    stages: tuple[StageView, ...]
    offered_rate: float
    admitted_rate: float
    completed_rate: float
    """Requests the last stage finished per second (the pipeline's capacity when backlogged)."""
    p99_s: float | None
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Plan:
    consumers: tuple[int, ...]
    partitions: tuple[int, ...]
    admission_rate: float = 0.0
    """Requests/s admitted at ingest; 0 = unlimited."""


class Controller(Protocol):
    """A policy under test: what to run, and how to place partitions on consumers."""

    name: str
    control_s: float

    def start(self, model: PipelineModel, trace: Trace) -> Plan: ...

    def control(self, view: View) -> Plan: ...

    def assign(self, stage: int, rates: FloatArray, consumers: int, previous: IntArray) -> IntArray:
        """Owner (0..consumers-1) of each partition; ``previous`` holds -1 for new ones."""
        ...


@dataclass
class Result:
    policy: str
    trace: str
    hours: float
    offered: float
    in_time: float
    shed: float
    consumer_seconds: float
    scale_events: int
    max_partitions: int
    busiest_over_mean: float
    consumers_series: FloatArray = field(repr=False)
    missed_series: FloatArray = field(repr=False)
    """Requests per step not answered in time (late or shed)."""

    @property
    def attainment(self) -> float:
        """In time / offered: shed and late requests both count as missed."""
        return self.in_time / self.offered if self.offered else 1.0

    @property
    def admitted_attainment(self) -> float:
        admitted = self.offered - self.shed
        return self.in_time / admitted if admitted else 1.0

    @property
    def scale_events_per_hour(self) -> float:
        return self.scale_events / self.hours if self.hours else 0.0


def round_robin(consumers: int, partitions: int) -> IntArray:
    """What Kafka's assignors converge to without rates: equal partition counts."""
    return np.arange(partitions, dtype=np.int64) % max(consumers, 1)


class _Stage:
    """One stage's mutable simulation state (its backlog lives in the simulator's matrix)."""

    def __init__(self, model: StageModel, partitions: int, weights: FloatArray) -> None:
        self.model = model
        self.weights = weights
        self.ready = 0
        self.pending: list[float] = []
        self.owner = np.zeros(0, dtype=np.int64)
        self.partitions = 0
        self.share: FloatArray = np.zeros(0)
        self.key_part: IntArray = np.zeros(0, dtype=np.int64)
        self.reassign = True
        self.grow(partitions)

    def grow(self, partitions: int) -> None:
        if partitions <= self.partitions:
            return
        self.key_part = np.arange(KEY_GROUPS, dtype=np.int64) % partitions
        self.share = np.bincount(self.key_part, weights=self.weights, minlength=partitions).astype(
            np.float64
        )
        owner = np.full(partitions, -1, dtype=np.int64)
        owner[: self.partitions] = self.owner
        self.owner = owner
        self.partitions = partitions
        self.reassign = True

    @property
    def provisioned(self) -> int:
        return self.ready + len(self.pending)

    def resize(self, want: int, ready_at: float) -> bool:
        """Start or stop consumers (pending ones are cancelled first); True if it changed."""
        want = max(1, min(want, self.partitions))
        have = self.provisioned
        if want == have:
            return False
        if want > have:
            self.pending.extend([ready_at] * (want - have))
            return True
        drop = have - want
        cut = min(drop, len(self.pending))
        self.pending = self.pending[: len(self.pending) - cut]
        if drop > cut:
            self.ready -= drop - cut
            self.reassign = True
        return True

    def promote(self, now: float) -> None:
        done = sum(1 for t in self.pending if t <= now)
        if done:
            self.pending = [t for t in self.pending if t > now]
            self.ready += done
            self.reassign = True


def _weighted_quantile(values: FloatArray, weights: FloatArray, q: float) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    idx = int(np.searchsorted(cum, q * cum[-1]))
    return float(values[order[min(idx, len(order) - 1)]])


class _Layout:
    """The per-step arrays: every stage's partitions padded to one width, and one flat array of
    consumers (each stage's ready consumers, then a dead one owning the padding)."""

    def __init__(self, stages: Sequence[_Stage]) -> None:
        self.width = max(s.partitions for s in stages)
        owners, caps, batches, offsets = [], [], [], []
        base = 0
        for st in stages:
            owner = np.full(self.width, base + st.ready, dtype=np.int64)
            owner[: st.partitions] = st.owner + base
            owners.append(owner)
            offsets.append(base)
            caps.append(np.append(np.full(st.ready, st.model.service_rate), 0.0))
            batches.append(np.full(st.ready + 1, st.model.batch_s))
            base += st.ready + 1
        self.owner = np.concatenate(owners)
        self.cap_rate = np.concatenate(caps)
        self.batch = np.concatenate(batches)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.ends = np.array([o + st.ready + 1 for o, st in zip(offsets, stages, strict=True)])
        self.local = [owner - base for owner, base in zip(owners, offsets, strict=True)]
        self.share = np.zeros((len(stages), self.width))
        for i, st in enumerate(stages):
            self.share[i, : st.partitions] = st.share


def _e2e(stages: Sequence[_Stage], delay: FloatArray, offsets: IntArray, hop: float) -> FloatArray:
    """End-to-end latency per slot of the widest stage. Partition counts are powers of two, so
    a key in slot ``j`` of the widest stage is in partition ``j % partitions`` of every other."""
    width = max(s.partitions for s in stages)
    slots = np.arange(width, dtype=np.int64)
    e2e = np.full(width, hop)
    for i, st in enumerate(stages):
        e2e += delay[st.owner[slots % st.partitions] + offsets[i]]
    return e2e


def _widest_share(stages: Sequence[_Stage]) -> FloatArray:
    return max(stages, key=lambda s: s.partitions).share


def simulate(
    trace: Trace,
    model: PipelineModel,
    controller: Controller,
    *,
    seed: int = 0,
    measure_noise: float = 0.05,
) -> Result:
    """Replay ``trace`` through ``model`` under ``controller``."""
    run = replay(trace, model, controller, seed=seed, measure_noise=measure_noise)
    try:
        view = next(run)
        while True:
            view = run.send(controller.control(view))
    except StopIteration as done:
        result: Result = done.value
        return result


def replay(
    trace: Trace,
    model: PipelineModel,
    controller: Controller,
    *,
    seed: int = 0,
    measure_noise: float = 0.05,
) -> Generator[View, Plan, Result]:
    """`simulate` as a generator: it yields the `View` of every control look and takes the
    `Plan` to apply, so a driver can decide for several pipelines at once (`simulate_fleet`);
    ``controller`` still starts the run and assigns partitions. Returns the `Result`."""
    if model.partitions & (model.partitions - 1):
        raise ValueError(f"partitions: {model.partitions} is not a power of two")
    rng = np.random.default_rng(seed)
    dt = trace.dt
    stages = [_Stage(m, model.partitions, trace.key_weights) for m in model.stages]
    n_st = len(stages)
    plan = controller.start(model, trace)
    for st, n, p in zip(stages, plan.consumers, plan.partitions, strict=True):
        st.grow(min(p, model.max_partitions))
        st.ready = max(1, min(n, st.partitions))
    admission = plan.admission_rate
    hop_total = model.hop_s * n_st
    q = np.zeros((n_st, max(s.partitions for s in stages)))
    out_prev = np.full(n_st, float(trace.rate[0]))  # start in steady state, not filling up
    inflow_acc = np.zeros(n_st)
    acc_steps = 0
    offered_tot = in_time = shed = consumer_s = 0.0
    scale_events = 0
    busiest = 1.0
    series = np.zeros(trace.steps)
    missed = np.zeros(trace.steps)
    next_control = controller.control_s
    lay: _Layout | None = None
    share_w = _widest_share(stages)

    for step in range(trace.steps):
        now = step * dt
        for st in stages:
            if st.pending:
                st.promote(now)
        if lay is None or any(st.reassign for st in stages):
            for i, st in enumerate(stages):
                if st.reassign or (st.owner < 0).any():
                    prev = np.where(st.owner < st.ready, st.owner, -1)
                    rates = st.share * max(float(out_prev[i - 1]) if i else 1.0, 1e-9)
                    st.owner = controller.assign(i, rates, st.ready, prev)
                    st.reassign = False
                    load = np.bincount(st.owner, weights=st.share, minlength=st.ready)
                    busiest = max(busiest, float(load.max() / load.mean()))
            lay = _Layout(stages)
            share_w = _widest_share(stages)
            if lay.width > q.shape[1]:
                q = np.pad(q, ((0, 0), (0, lay.width - q.shape[1])))
        offered = float(trace.rate[step])
        admitted = min(offered, admission) if admission > 0 else offered
        # stage by stage within the step: a hop takes milliseconds, not a step
        inflow = np.empty(n_st)
        n_c = len(lay.cap_rate)
        demand = np.empty(n_c)
        arr = np.empty(n_c)
        capdt = lay.cap_rate * dt
        x = admitted
        for i in range(n_st):
            inflow[i] = x
            lo, hi = int(lay.offsets[i]), int(lay.ends[i])
            local = lay.local[i]
            a_i = lay.share[i] * (x * dt)
            q[i] += a_i
            d_i = np.bincount(local, weights=q[i], minlength=hi - lo)
            arr[lo:hi] = np.bincount(local, weights=a_i, minlength=hi - lo)
            f_i = np.minimum(1.0, capdt[lo:hi] / np.maximum(d_i, 1e-12))
            q[i] *= 1.0 - f_i[local]
            demand[lo:hi] = d_i
            x = float((d_i * f_i).sum()) / dt
        out_prev = np.append(inflow[1:], x)
        live = lay.cap_rate > 0
        backlog = np.zeros(n_c)
        backlog[live] = np.maximum(demand[live] - capdt[live], 0.0) / lay.cap_rate[live]
        rho = np.zeros(n_c)
        rho[live] = np.minimum(arr[live] / capdt[live], 0.95)
        delay = backlog + lay.batch * (1.0 + rho / (2.0 * (1.0 - rho)))
        delay[~live] = 0.0
        bound = float(np.maximum.reduceat(delay, lay.offsets).sum()) + hop_total
        e2e: FloatArray | None = None
        late = 0.0
        if bound > model.deadline_s:
            e2e = _e2e(stages, delay, lay.offsets, hop_total)
            late = float(share_w[e2e > model.deadline_s].sum())
        offered_tot += offered * dt
        shed += (offered - admitted) * dt
        in_time += admitted * dt * (1.0 - late)
        missed[step] = (offered - admitted * (1.0 - late)) * dt
        prov = sum(st.provisioned for st in stages)
        consumer_s += prov * dt
        series[step] = prov
        inflow_acc += inflow
        acc_steps += 1
        if now + dt < next_control:
            continue
        next_control += controller.control_s
        if bound < 0.5 * model.deadline_s:
            p99: float | None = bound  # an upper bound, already below any shedding threshold
        else:
            if e2e is None:
                e2e = _e2e(stages, delay, lay.offsets, hop_total)
            p99 = _weighted_quantile(e2e, share_w, 0.99)
        mean_in = inflow_acc / acc_steps
        inflow_acc[:] = 0.0
        acc_steps = 0
        views = []
        for i, st in enumerate(stages):
            rates = st.share * mean_in[i]
            views.append(
                StageView(
                    st.model.name,
                    st.partitions,
                    st.ready,
                    st.provisioned,
                    float(mean_in[i]),
                    rates,
                    q[i, : st.partitions] + rates * model.commit_lag_s,
                    st.model.service_rate * float(np.exp(rng.normal(0.0, measure_noise))),
                )
            )

        plan = yield View(
            now + dt,
            tuple(views),
            offered,
            admitted,
            float(out_prev[-1]),
            p99,
            model.deadline_s,
        )
        admission = plan.admission_rate
        for i, st in enumerate(stages):
            st.grow(min(plan.partitions[i], model.max_partitions))
            if st.resize(plan.consumers[i], now + dt + model.startup_s):
                scale_events += 1
    return Result(
        controller.name,
        trace.name,
        trace.hours,
        offered_tot,
        in_time,
        shed,
        consumer_s,
        scale_events,
        max(s.partitions for s in stages),
        busiest,
        series,
        missed,
    )


# -- several pipelines under one budget ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One pipeline of a fleet: its traffic, its model and its controller (which starts it and
    assigns its partitions; the fleet controller decides its plans)."""

    trace: Trace
    model: PipelineModel
    controller: Controller


class FleetController(Protocol):
    """Decides every pipeline's plan at once from all their views (a shared core budget)."""

    def control(self, views: Sequence[View]) -> Sequence[Plan]: ...


@dataclass
class FleetResult:
    results: list[Result]
    peak_consumers: float
    """The most consumers the pipelines held together at any step (starting ones included)."""


def simulate_fleet(
    members: Sequence[Member],
    controller: FleetController,
    *,
    seed: int = 0,
    measure_noise: float = 0.05,
) -> FleetResult:
    """Replay every member's trace in lockstep (one time step, one control look for all),
    ``controller`` deciding all their plans at each look."""
    steps = {(m.trace.steps, m.trace.dt, m.controller.control_s) for m in members}
    if len(steps) != 1:
        raise ValueError(f"a fleet's traces need equal steps, dt and control_s, got {steps}")
    runs = [
        replay(m.trace, m.model, m.controller, seed=seed + i, measure_noise=measure_noise)
        for i, m in enumerate(members)
    ]
    views: list[View] = [next(r) for r in runs]
    results: list[Result | None] = [None] * len(runs)
    while all(r is None for r in results):
        plans = controller.control(views)
        for i, (run, plan) in enumerate(zip(runs, plans, strict=True)):
            try:
                views[i] = run.send(plan)
            except StopIteration as done:
                results[i] = done.value
    finished = [r for r in results if r is not None]
    if len(finished) != len(runs):
        raise RuntimeError("the fleet's replays did not end together")
    total = np.sum([r.consumers_series for r in finished], axis=0)
    return FleetResult(finished, float(total.max()) if len(total) else 0.0)
