"""Skewed keys on a real broker: three `jizhi worker --stages ingest` of one consumer group over
twelve partitions whose traffic follows Zipf (s = 1: the three hottest carry 60%).

First the default (cooperative-sticky: four partitions each, whatever they carry), then the
allocator's balanced assignment (`allocator.policy.assign_partitions` on the measured counts)
published as a plan on ``jizhi.<pipeline>.control`` while traffic flows: the workers leave the
group and hand partitions over by claims. Every request must come out of ingest exactly once
across both phases and the hand-over, and the balanced phase's busiest worker must process at
most 1.3x the mean.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from allocator.actuators.topics import PlanPublisher
from allocator.policy import assign_partitions
from stages import metrics
from stages.codec import EventCodec
from stages.events import Request
from stages.runtime.kafka import ControlFollower, control_topic, ensure_topics, topic_name
from tests.integration.workerkit import Background, WorkerProc, Workers, unique_pipeline

pytestmark = pytest.mark.integration

PARTITIONS = 12
WEIGHTS = np.arange(1, PARTITIONS + 1, dtype=np.float64) ** -1.0
WEIGHTS /= WEIGHTS.sum()
PHASE = 2400  # requests per measured phase


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _counts(n: int) -> list[int]:
    """Requests per partition: the Zipf weights, rounded, summing to ``n``."""
    raw = np.floor(WEIGHTS * n).astype(int)
    raw[0] += n - int(raw.sum())
    return [int(x) for x in raw]


def _produce(
    bootstrap: str, pipeline: str, tag: str, n: int, rate: float | None = None
) -> list[str]:
    """``n`` requests spread over partitions by the weights, interleaved, at ``rate`` per second
    (None: as fast as it goes); returns their ids."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    topic = topic_name(pipeline, "requests")
    order = [p for p, c in enumerate(_counts(n)) for _ in range(c)]
    np.random.default_rng(len(tag)).shuffle(order)
    ids = []
    start = time.monotonic()
    for i, p in enumerate(order):
        rid = f"{tag}-{i}"
        req = Request(rid, user_id=i, candidates=[1, 2, 3], timeout_ms=600_000.0)
        producer.produce(topic, msgspec.json.encode(req), str(i).encode(), partition=p)
        ids.append(rid)
        if rate is not None:
            ahead = start + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                producer.poll(0)
                time.sleep(ahead)
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return ids


class Outputs:
    """Reads ingest's output topic from the beginning: request id -> times seen."""

    def __init__(self, bootstrap: str, pipeline: str) -> None:
        self.topic = topic_name(pipeline, "features")
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": f"{pipeline}.test-reader"}
        )
        self._consumer.assign([TopicPartition(self.topic, p, 0) for p in range(PARTITIONS)])
        self._codec = EventCodec()
        self.seen: Counter[str] = Counter()

    def wait_for(self, ids: list[str], timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not all(i in self.seen for i in ids):
            for msg in self._consumer.consume(500, 0.2):
                if msg.error() is None:
                    self.seen[self._codec.decode(msg.value() or b"").request_id] += 1
        missing = [i for i in ids if i not in self.seen]
        assert not missing, f"{len(missing)} requests never left ingest, e.g. {missing[:5]}"

    def close(self) -> None:
        self._consumer.close()


def _processed(port: int, pipeline: str) -> float:
    """Events the worker's ingest has taken in (the batch-size histogram's sum)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    labels = rf'pipeline="{re.escape(pipeline)}",stage="ingest"'
    m = re.search(rf"{metrics.BATCH_SIZE_NAME}_sum{{{labels}}} (\S+)", text)
    return float(m.group(1)) if m else 0.0


def _ratio(loads: list[float]) -> float:
    return max(loads) / (sum(loads) / len(loads))


@pytest.fixture
def workers(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(kafka_bootstrap, unique_pipeline("skew"), tmp_path, tmp_path)
    yield w
    w.close()


def _settled(procs: list[WorkerProc], want: dict[str, list[int]] | None, timeout: float) -> None:
    """Until the workers' latest printed assignments cover every partition once and equal
    ``want`` (instance -> partitions; None: the even counts cooperative-sticky settles on)."""
    end = time.monotonic() + timeout
    now: list[list[int]] = []
    while time.monotonic() < end:
        now = [(p.assignments() or [{"ingest": []}])[-1]["ingest"] for p in procs]
        flat = sorted(x for a in now for x in a)
        even = all(len(a) == PARTITIONS // len(procs) for a in now)
        if flat == list(range(PARTITIONS)) and (
            even if want is None else now == [want[f"ingest-{i}"] for i in range(len(procs))]
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"assignments {now} never settled (want {want})")


def test_balanced_assignment_through_the_control_topic(
    workers: Workers, kafka_bootstrap: str
) -> None:
    t0 = time.monotonic()
    p = workers.pipeline
    conf = {"bootstrap.servers": kafka_bootstrap}
    ensure_topics(
        conf,
        [topic_name(p, "requests"), topic_name(p, "features")],
        partitions=PARTITIONS,
        replication=1,
    )
    ports = [_free_port() for _ in range(3)]

    def start(i: int) -> WorkerProc:
        return workers.start(
            "ingest",
            *("--instance", f"ingest-{i}", "--metrics-port", str(ports[i])),
            *("--partitions", str(PARTITIONS)),
        )

    procs = [start(i) for i in range(3)]
    _settled(procs, None, 60)
    out = Outputs(kafka_bootstrap, p)
    try:
        # Phase 1: the default assignor.
        before = [_processed(port, p) for port in ports]
        ids = _produce(kafka_bootstrap, p, "default", PHASE)
        out.wait_for(ids)
        default = [_processed(port, p) - b for port, b in zip(ports, before, strict=True)]

        # The hand-over, under traffic.
        previous = {
            x: f"ingest-{i}"
            for i, proc in enumerate(procs)
            for x in proc.assignments()[-1]["ingest"]
        }
        plan = assign_partitions(
            [float(c) for c in _counts(PHASE)], [f"ingest-{i}" for i in range(3)], previous
        )
        flowing = Background(lambda: _produce(kafka_bootstrap, p, "handover", 1500, rate=300.0))
        time.sleep(1.0)
        t_plan = time.monotonic()
        PlanPublisher(conf, control_topic(p))("ingest", plan.owners)
        _settled(procs, plan.owners, 60)
        handover_s = time.monotonic() - t_plan
        ids += flowing.result(60)
        out.wait_for(ids)

        # Phase 2: the balanced plan.
        before = [_processed(port, p) for port in ports]
        phase2 = _produce(kafka_bootstrap, p, "balanced", PHASE)
        out.wait_for(phase2)
        ids += phase2
        balanced = [_processed(port, p) - b for port, b in zip(ports, before, strict=True)]

        # A named worker restarted while a plan stands never joins the group: it reads the
        # plan at start and takes its share back once its old claim is gone.
        assert procs[0].terminate() == 0, workers.logs()
        procs[0] = start(0)
        _settled(procs, plan.owners, 60)
        assert "left the consumer group" not in procs[0].text()
        ids += _produce(kafka_bootstrap, p, "restarted", 600)
        out.wait_for(ids)
    finally:
        out.close()

    twice = [i for i, n in out.seen.items() if n > 1]
    print(
        f"\nskew (Zipf s=1 over {PARTITIONS} partitions, 3 consumers, {PHASE} requests a phase): "
        f"busiest/mean default {_ratio(default):.2f} {default}, balanced {_ratio(balanced):.2f} "
        f"{balanced} (plan {plan.owners}, predicted {plan.busiest_over_mean():.2f}); "
        f"hand-over {handover_s:.1f} s, {plan.moved} partitions moved; "
        f"test {time.monotonic() - t0:.0f} s"
    )
    assert not twice, f"{len(twice)} requests processed twice, e.g. {twice[:5]}\n{workers.logs()}"
    assert len(out.seen) == len(ids)
    assert sum(balanced) == PHASE and sum(default) == PHASE
    assert _ratio(balanced) <= 1.3, workers.logs()
    for proc in procs:
        assert proc.terminate() == 0, workers.logs()
    # Stopped cleanly, each worker deleted its claim: its partitions are free for the next plan.
    follower = ControlFollower(conf, control_topic(p))
    try:
        assert follower.catch_up() and follower.claims("ingest") == {}
    finally:
        follower.close()
