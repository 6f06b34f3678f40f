"""The broker `jizhi local` starts is a real Kafka: any client talks to it, and three nodes survive
losing one. Tests of the `jizhi local` lifecycle skip when the session's broker came from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from jizhi import local
from stages.runtime.kafka import KafkaAdmin

pytestmark = pytest.mark.integration


def _create_topic(
    bootstrap: str,
    topic: str,
    *,
    partitions: int = 1,
    replication: int = 1,
    config: dict[str, str] | None = None,
) -> None:
    created = KafkaAdmin({"bootstrap.servers": bootstrap}).create_topics(
        [topic], partitions=partitions, replication=replication, config={topic: config or {}}
    )
    assert created == [topic], f"{topic} existed before the test"


def _consume(bootstrap: str, topic: str, count: int, *, timeout: float = 30.0) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


def _run_cli(*argv: str) -> int:
    """What jizhi/cli.py does with `local.register`, without depending on it."""
    parser = argparse.ArgumentParser(prog="jizhi")
    local.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    result: int = args.func(args)
    return result


def test_up_is_idempotent(local_cluster: local.LocalStatus) -> None:
    started = time.monotonic()
    again = local.up(3 if len(local_cluster.brokers) == 3 else 1)
    assert time.monotonic() - started < 5.0, "up on a running cluster must only report"
    assert again.bootstrap == local_cluster.bootstrap
    assert [b.pid for b in again.brokers] == [b.pid for b in local_cluster.brokers]
    assert all(b.alive for b in again.brokers)


def test_status_json_through_the_cli(
    local_cluster: local.LocalStatus, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run_cli("local", "status", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is True
    assert report["bootstrap"] == local_cluster.bootstrap
    assert all(b["alive"] for b in report["brokers"])
    assert [b["pid"] for b in report["brokers"]] == [b.pid for b in local_cluster.brokers]
    assert report["bootstrap"] == ",".join(f"127.0.0.1:{b['port']}" for b in report["brokers"])


def test_confluent_kafka_round_trip(kafka_bootstrap: str, unique_topic: Callable[..., str]) -> None:
    topic = unique_topic()
    _create_topic(kafka_bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "linger.ms": 5})
    sent = {f"user-{i}": f"payload-{i}".encode() for i in range(200)}
    for key, value in sent.items():
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0, "messages still queued after 30 s"
    got = _consume(kafka_bootstrap, topic, len(sent))
    assert {m.key().decode(): m.value() for m in got} == sent


def _kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        message = "kcat is not installed (Debian/Ubuntu: apt-get install -y kcat)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install it")
        pytest.skip(message)
    return path


def test_kcat_round_trip(kafka_bootstrap: str, unique_topic: Callable[..., str]) -> None:
    """kcat stands for every non-Python client: the edge of jizhi speaks plain Kafka."""
    kcat = _kcat()
    topic = unique_topic()
    _create_topic(kafka_bootstrap, topic)
    lines = [json.dumps({"request_id": f"r{i}", "user_id": i}) for i in range(20)]
    subprocess.run(
        [kcat, "-b", kafka_bootstrap, "-t", topic, "-P", "-K", "|"],
        input="".join(f"k{i}|{line}\n" for i, line in enumerate(lines)),
        text=True,
        check=True,
        timeout=30,
    )
    out = subprocess.run(
        [
            kcat,
            "-b",
            kafka_bootstrap,
            "-t",
            topic,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k|%s\n",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.splitlines() == [f"k{i}|{line}" for i, line in enumerate(lines)]
    # And the other way round: what kcat wrote, confluent-kafka reads.
    assert [m.value().decode() for m in _consume(kafka_bootstrap, topic, 20)] == lines


# --- three brokers --------------------------------------------------------------------------


@pytest.mark.slow
def test_three_brokers_survive_a_killed_broker(
    three_brokers: Path, unique_topic: Callable[..., str]
) -> None:
    cluster = local.status(state_dir=three_brokers)
    assert cluster.bootstrap is not None
    bootstrap = cluster.bootstrap
    assert [b.alive for b in cluster.brokers] == [True, True, True]
    topic = unique_topic("rf3")
    _create_topic(
        bootstrap, topic, partitions=3, replication=3, config={"min.insync.replicas": "2"}
    )
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "log_level": 0})
    for i in range(100):
        producer.produce(topic, key=str(i).encode(), value=f"before-{i}".encode())
    assert producer.flush(30) == 0

    # Kill the leader of partition 0 (the node clients are talking to), not just any node.
    victim = int(producer.list_topics(topic, timeout=10).topics[topic].partitions[0].leader)
    local.kill_broker(victim, state_dir=three_brokers)
    after = {b.node_id: b.alive for b in local.status(state_dir=three_brokers).brokers}
    assert after[victim] is False
    assert sum(after.values()) == 2

    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for i in range(100):
        producer.produce(
            topic, key=str(i).encode(), value=f"after-{i}".encode(), on_delivery=on_delivery
        )
    assert producer.flush(60) == 0, "acks=all produce stalled with 2 of 3 replicas alive"
    assert errors == []
    got = {m.value().decode() for m in _consume(bootstrap, topic, 200, timeout=60)}
    assert got == {f"{when}-{i}" for when in ("before", "after") for i in range(100)}

    local.start_broker(victim, state_dir=three_brokers)
    assert all(b.alive for b in local.status(state_dir=three_brokers).brokers)
