"""The admission rate the allocator publishes on ``jizhi.<pipeline>.control`` reaches a running
ingest worker: within a few seconds it sheds (answers ``shed``) and exports the limit."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from allocator.actuators.topics import AdmissionPublisher
from stages.events import Request, Response
from stages.runtime.kafka import control_topic, topic_name
from tests.integration.workerkit import PARTITIONS, Workers, unique_pipeline

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def workers(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(kafka_bootstrap, unique_pipeline("adm"), tmp_path, tmp_path)
    yield w
    w.close()


def _gauge(port: int, pipeline: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("jizhi_ingest_admission_rate{") and f'"{pipeline}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return None


def test_a_published_admission_rate_makes_ingest_shed(
    workers: Workers, kafka_bootstrap: str
) -> None:
    p = workers.pipeline
    port = _free_port()
    worker = workers.start("ingest", "--metrics-port", str(port))
    worker.wait_assigned()
    assert _gauge(port, p) == 0.0  # unlimited, as configured

    stop = threading.Event()

    def produce() -> None:  # 100 requests/s until stopped
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        i = 0
        while not stop.is_set():
            req = Request(f"r{i}", user_id=i, candidates=[1, 2], timeout_ms=60_000.0)
            producer.produce(topic_name(p, "requests"), msgspec.json.encode(req), str(i).encode())
            producer.poll(0)
            i += 1
            time.sleep(0.01)
        producer.flush(10)

    answers = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"{p}.test"})
    answers.assign([TopicPartition(topic_name(p, "responses"), x, 0) for x in range(PARTITIONS)])
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        published = time.monotonic()
        AdmissionPublisher({"bootstrap.servers": kafka_bootstrap}, control_topic(p))(5.0)
        first_shed: float | None = None
        while first_shed is None and time.monotonic() - published < 15:
            for msg in answers.consume(100, 0.2):
                if msg.error() is None:
                    r = msgspec.json.decode(msg.value() or b"", type=Response)
                    if r.status == "shed":
                        first_shed = time.monotonic()
                        break
    finally:
        stop.set()
        thread.join(15)
        answers.close()
    assert first_shed is not None, f"nothing shed 15 s after the limit\n{workers.logs()}"
    took = first_shed - published
    print(f"\nadmission 5 req/s under 100 req/s: first `shed` answer {took:.2f} s after publishing")
    assert took < 5.0
    assert _gauge(port, p) == 5.0
    assert worker.terminate() == 0, workers.logs()


def test_a_withdrawn_plan_is_gone_for_every_reader(kafka_bootstrap: str) -> None:
    """What a stopping allocator does to its plans: a tombstone, after which a follower (a
    worker starting later) finds no plan and joins the group as usual."""
    from allocator.actuators.topics import PlanPublisher  # noqa: PLC0415
    from stages.runtime.kafka import ControlFollower, ensure_control_topic  # noqa: PLC0415

    conf = {"bootstrap.servers": kafka_bootstrap}
    p = unique_pipeline("withdraw")
    topic = ensure_control_topic(conf, p, replication=1)
    plans = PlanPublisher(conf, topic)
    plans("embed", {"a": [0, 1], "b": [2]})
    plans("score", {"a": [0]})
    before = ControlFollower(conf, topic)
    assert before.catch_up()
    assert before.plan("embed") is not None
    before.close()
    plans.withdraw("embed")
    after = ControlFollower(conf, topic)
    assert after.catch_up()
    assert after.plan("embed") is None
    assert after.plan("score") is not None  # only the withdrawn stage's plan went
    after.close()
