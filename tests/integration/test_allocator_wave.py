"""The allocator's reconcile loop on a real broker, riding a 1x / 3x / 1x traffic wave.

An I/O-bound stage (`_sleepy_worker`: 2 ms per batch + 5 ms per event, sleeping, so about 190
events/s per consumer whatever the cores) runs as consumer processes that the real `Reconciler`
starts and stops through the real `LocalActuator`, observing committed lag with the real
`KafkaObserver` and service rates from the workers' /metrics. A producer drives 100 -> 300 -> 100
ids/s: one consumer holds 1x at ~55% busy; 3x needs at least 3 at the 0.75 utilisation target.

Asserted, and printed as a timeline and figures:
- the allocator scales up within ``SCALE_UP_S`` of the step to 3x, to at least 3 consumers;
- after each step the committed lag is back under 1 s of arrivals at the new rate (auto-commit
  every second alone keeps up to that much uncommitted) within ``DRAIN_S``;
- it scales down during the last 1x, once its cool-down and stabilisation window have passed;
- no id is lost through any scale event or partition hand-over: every produced id is in the
  output topic at least once (duplicates, which at-least-once allows, are counted and printed).

Twice: with the consumer group's cooperative-sticky assignor (dynamic members), and with the
allocator's own assignment plans (``assignment = true``: named workers that follow the plans the
loop publishes on the control topic, releasing and claiming partitions at every scale event).
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from allocator.actuators.local import LocalActuator, instance_name
from allocator.actuators.topics import PlanPublisher
from allocator.decide import AllocatorOptions, Decider
from allocator.errors import ObserveError
from allocator.observe import scrape
from allocator.observe_kafka import KafkaObserver
from allocator.policy import ScalingOptions
from allocator.reconcile import Look, Reconciler
from stages.runtime.kafka import ensure_control_topic, ensure_topics, group_id, topic_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STAGE = "embed"
PARTITIONS = 6
PHASES: tuple[tuple[float, float], ...] = ((15.0, 100.0), (20.0, 300.0), (25.0, 100.0))
"""(seconds, ids/s): 1x, 3x, 1x."""
INTERVAL_S = 2.0
SCALING = ScalingOptions(
    target_utilisation=0.75,
    drain_s=10.0,
    down_cooldown_s=10.0,
    down_window_s=10.0,
    tolerance=0.15,
    lookahead_s=3.0,
)
SCALE_UP_S = 8.0
DRAIN_S = 15.0


@dataclass(frozen=True, slots=True)
class Row:
    t: float
    arrival: float
    desired: int
    actual: int
    lag: float
    reason: str
    need: float
    service_rate: float | None


class Wave:
    """Publishes ids 0, 1, 2, ... at each phase's rate, keyed so they spread over partitions."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "enable.idempotence": True,
            }
        )
        self._topic = topic
        self.sent = 0
        self.failed = 0
        self.started = 0.0
        self.started_wall = 0.0
        self._thread = threading.Thread(target=self._run, name="wave", daemon=True)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def start(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self._thread.start()

    def _run(self) -> None:
        begin = self.started
        for seconds, rate in PHASES:
            sent_before = self.sent
            while (elapsed := time.monotonic() - begin) < seconds:
                due = int(rate * elapsed) - (self.sent - sent_before)
                for _ in range(max(0, due)):
                    i = self.sent
                    self._producer.produce(
                        self._topic,
                        str(i).encode(),
                        str(i % 997).encode(),
                        on_delivery=self._delivered,
                    )
                    self.sent += 1
                self._producer.poll(0)
                time.sleep(0.01)
            begin += seconds
        self._producer.flush(30.0)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def read_ids(bootstrap: str, topic: str, timeout: float = 30.0) -> Counter[str]:
    """Every value of ``topic`` from the beginning to its current end."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"wave-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = c.list_topics(topic, timeout=10.0).topics[topic]
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1]
            for p in meta.partitions
        }
        c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        got: Counter[str] = Counter()
        pos = dict.fromkeys(ends, 0)
        end = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in ends) and time.monotonic() < end:
            for msg in c.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                got[(msg.value() or b"").decode()] += 1
                pos[msg.partition() or 0] = (msg.offset() or 0) + 1
        return got
    finally:
        c.close()


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f} s"


_ASSIGNED = re.compile(r"^(\S+ \S+) \S+ INFO \S+: (assigned|plan \d+: took) \[\d")
"""A consumer's log line when it first owns partitions: from the group, or from a plan."""


def _serving_times(log_dir: Path, t0_wall: float) -> list[float]:
    """When each consumer process first owned a partition, in seconds since the wave began."""
    out = []
    for log in sorted(log_dir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = _ASSIGNED.match(line)
            if m:
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                out.append(at - t0_wall)
                break
    return sorted(out)


def _wait_readable(observer: KafkaObserver, timeout: float = 30.0) -> None:
    """A topic created a moment ago answers NOT_LEADER until its leader is elected."""
    end = time.monotonic() + timeout
    while True:
        try:
            if observer.offsets():
                return
        except ObserveError:
            if time.monotonic() > end:
                raise
        time.sleep(0.2)


def _drain_time(rows: list[Row], start: float, stop: float, drained: float) -> float | None:
    """Seconds from ``start`` until the lag is back under ``drained`` after its peak in
    [start, stop); 0 when it never left; None when it did not come back before ``stop``."""
    window = [r for r in rows if start <= r.t < stop]
    if not window:
        return None
    peak = max(range(len(window)), key=lambda i: window[i].lag)
    if window[peak].lag <= drained:
        return 0.0
    for r in window[peak:]:
        if r.lag <= drained:
            return r.t - start
    return None


@pytest.mark.parametrize("plans", [False, True], ids=["group", "plans"])
def test_allocator_rides_a_wave_without_losing_a_message(
    kafka_bootstrap: str, tmp_path: Path, plans: bool
) -> None:
    p = f"wave-{uuid.uuid4().hex[:8]}"
    # Without plans, dynamic membership on purpose: a static member (--instance) does not leave
    # the group on SIGTERM, so its partitions stall until session.timeout.ms after every
    # scale-down. Plan followers are named, but never group members once a plan stands.
    conf = {"bootstrap.servers": kafka_bootstrap}
    src, out = topic_name(p, STAGE), f"jizhi.{p}.out"
    ensure_topics(conf, [src, out], partitions=PARTITIONS, replication=1)
    control = ensure_control_topic(conf, p, replication=1) if plans else ""

    def command(stage: str, slot: int, port: int) -> list[str]:
        named = ["--instance", instance_name(p, stage, slot), "--follow-plans"] if plans else []
        return [
            sys.executable,
            "-m",
            "tests.integration._sleepy_worker",
            "--bootstrap",
            kafka_bootstrap,
            "--pipeline",
            p,
            "--stage",
            stage,
            "--out",
            out,
            "--metrics-port",
            str(port),
            *named,
        ]

    actuator = LocalActuator(
        command,
        log_dir=tmp_path / "workers",
        env={"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
        stop_timeout=30.0,
        names=functools.partial(instance_name, p) if plans else None,
    )
    reconciler = Reconciler(
        p,
        (STAGE,),
        KafkaObserver(conf, {STAGE: (src, group_id(p, STAGE))}),
        actuator,
        Decider(AllocatorOptions(scaling=SCALING, shedding=False)),
        scrape=lambda urls: scrape(urls, pipeline=p),
        plans=PlanPublisher(conf, control) if plans else None,
        instances=actuator.instances if plans else None,
        interval_s=INTERVAL_S,
    )
    wave = Wave(kafka_bootstrap, src)
    rows: list[Row] = []
    looks: list[Look] = []

    def record(look: Look) -> None:
        looks.append(look)
        if look.decisions is None or not look.rates:
            return
        r, d = look.rates[0], look.decisions.stages[0]
        t = time.monotonic() - wave.started if wave.started else -1.0
        rows.append(
            Row(
                t,
                r.arrival_rate,
                d.consumers.desired,
                actuator.actual(STAGE),
                r.lag,
                d.consumers.reason,
                d.consumers.need,
                r.service_rate,
            )
        )

    stop = threading.Event()
    died: list[BaseException] = []

    def run_loop() -> None:
        try:
            reconciler.run(stop.is_set, on_look=record)
        except BaseException as exc:
            died.append(exc)
            raise

    loop = threading.Thread(target=run_loop, name="reconcile", daemon=True)
    observer = KafkaObserver(conf, {STAGE: (src, group_id(p, STAGE))})
    _wait_readable(observer)
    t_begin = time.monotonic()
    loop.start()
    try:
        # The allocator starts the first consumer at its first look; the wave starts once that
        # consumer owns the partitions, so the first step measures the loop, not a cold start.
        first = tmp_path / "workers" / f"{STAGE}-0.log"
        end = time.monotonic() + 30.0
        while not any(
            _ASSIGNED.match(line)
            for line in (first.read_text() if first.exists() else "").splitlines()
        ):
            if time.monotonic() >= end or died:
                log = first.read_text()[-2000:] if first.exists() else "(never written)"
                pytest.fail(
                    f"the allocator's first consumer owned no partition within 30 s "
                    f"(reconcile loop {'died: ' + repr(died[0]) if died else 'alive'}, "
                    f"{len(looks)} looks); without it the wave would measure a cold start. "
                    f"{first}:\n{log}"
                )
            time.sleep(0.1)
        wave.start()
        total = sum(s for s, _ in PHASES)
        wave.join(total + 30.0)
        # Let the last ids through, then stop the loop and every consumer (drain, commit, leave).
        end = time.monotonic() + 30.0
        while time.monotonic() < end and sum(observer.offsets()[0].lags()) > 0:
            time.sleep(0.5)
        final_lag = sum(observer.offsets()[0].lags())
    finally:
        stop.set()
        loop.join(15.0)
        actuator.close(30.0)
    wall = time.monotonic() - t_begin

    got = read_ids(kafka_bootstrap, out)
    want = {str(i) for i in range(wave.sent)}
    missing = sorted(want - got.keys(), key=int)
    dups = {k: n for k, n in got.items() if n > 1}

    # -- the timeline and the figures --------------------------------------------------------
    mode = "assignment plans" if plans else "cooperative-sticky group"
    print(f"\npipeline {p} ({mode}): {wave.sent} ids produced, wall {wall:.1f} s")
    print(f"logs in {tmp_path}")
    print(
        f"{'t/s':>6} {'in/s':>5} {'svc/s':>5} {'need':>5} {'want':>4} {'have':>4} {'lag':>5}  why"
    )
    for r in rows:
        svc = f"{r.service_rate:5.0f}" if r.service_rate is not None else "    -"
        print(
            f"{r.t:6.1f} {r.arrival:5.0f} {svc} {r.need:5.2f} {r.desired:4d} {r.actual:4d} "
            f"{r.lag:5.0f}  {r.reason}"
        )
    edges = [0.0]
    for seconds, _ in PHASES:
        edges.append(edges[-1] + seconds)
    ups = [
        r.t - edges[1]
        for r in rows
        if edges[1] <= r.t < edges[2] and r.reason.startswith("scale_up")
    ]
    time_to_up = ups[0] if ups else None
    serving = _serving_times(tmp_path / "workers", wave.started_wall)
    joined = [t - edges[1] for t in serving if edges[1] <= t < edges[2]]
    drains = [_drain_time(rows, edges[i], edges[i + 1], PHASES[i][1]) for i in range(len(PHASES))]
    downs = [r.t - edges[2] for r in rows if r.t >= edges[2] and r.reason == "scale_down"]
    per_phase = [
        [r.actual for r in rows if edges[i] <= r.t < edges[i + 1]] for i in range(len(PHASES))
    ]
    peaks = [
        max((r.lag for r in rows if edges[i] <= r.t < edges[i + 1]), default=0.0)
        for i in range(len(PHASES))
    ]
    ups_after_down = [
        r.t
        for r in rows
        if r.t >= edges[2] + (downs[0] if downs else 0) and r.reason.startswith("scale_up")
    ]
    print(
        f"1x->3x: first scale-up decision after {_s(time_to_up)}; "
        f"new consumers serving after {[round(j, 1) for j in joined]} s"
    )
    print(
        f"lag back under 1 s of arrivals after each step: {[_s(d) for d in drains]} "
        f"(bound {DRAIN_S:.0f} s)"
    )
    print(f"peak committed lag per phase: {[round(x) for x in peaks]}")
    print(
        f"3x->1x: scale-downs after {[round(d, 1) for d in downs]} s "
        f"(cool-down {SCALING.down_cooldown_s:.0f} s, window {SCALING.down_window_s:.0f} s)"
    )
    print(
        "consumers per phase (min/mean/max): "
        f"{[(min(c), round(sum(c) / len(c), 1), max(c)) for c in per_phase if c]}"
    )
    print(f"final lag {final_lag}; scale-ups after the first scale-down: {len(ups_after_down)}")
    print(
        f"lost {len(missing)} {missing[:20]}; "
        f"duplicated {len(dups)} ids ({sum(dups.values()) - len(dups)} extra copies)"
        + (f": {sorted(dups, key=int)[:20]}" if dups else "")
    )

    assert not died, f"the reconcile loop died: {died[0]!r}"
    failures = [lk.error for lk in looks if lk.error]
    assert not failures, failures
    assert wave.failed == 0
    assert not missing, f"lost {len(missing)} ids, e.g. {missing[:20]}"
    assert final_lag == 0
    assert time_to_up is not None and time_to_up <= SCALE_UP_S, time_to_up
    assert max(r.actual for r in rows if edges[1] <= r.t < edges[2]) >= 3
    for i, d in enumerate(drains):
        assert d is not None and d <= DRAIN_S, f"phase {i}: lag not drained within {DRAIN_S} s"
    assert joined and max(joined) <= SCALE_UP_S + 10.0, joined
    assert downs, "no scale-down during the last 1x"
    assert rows[-1].actual < max(r.actual for r in rows), "consumers stayed at the 3x size"
