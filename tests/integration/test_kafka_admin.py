"""`KafkaAdmin` against a real broker: the requests jizhi makes, and the errors it turns them into
(what was asked, of which cluster, and whether trying again can help)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stages.runtime.kafka import KafkaAdmin, TransportError

pytestmark = pytest.mark.integration


def test_topics_are_created_grown_and_deleted_idempotently(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    admin = KafkaAdmin({"bootstrap.servers": kafka_bootstrap})
    topic = unique_topic()
    assert admin.create_topics([topic], partitions=2, replication=1) == [topic]
    assert admin.create_topics([topic], partitions=5, replication=1) == []  # exists: as it is
    assert admin.partition_counts()[topic] == 2

    admin.create_partitions(topic, 3)
    # The broker acknowledges the new partition before every metadata answer shows it.
    end = time.monotonic() + 10
    while admin.partition_counts()[topic] != 3 and time.monotonic() < end:
        time.sleep(0.1)
    assert admin.partition_counts()[topic] == 3
    where = re.escape(f"grow topic {topic} to 2 partitions at {kafka_bootstrap}")
    with pytest.raises(TransportError, match=where):
        admin.create_partitions(topic, 2)  # Kafka never shrinks a topic

    assert admin.delete_topics([topic, unique_topic("never")]) == [topic]


def test_offsets_and_members_of_a_group(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    conf = {"bootstrap.servers": kafka_bootstrap}
    admin = KafkaAdmin(conf)
    topic, group = unique_topic(), unique_topic("group")
    admin.create_topics([topic], partitions=2, replication=1)
    producer = Producer(conf)
    for i in range(5):
        producer.produce(topic, b"x", partition=i % 2)
    assert producer.flush(30) == 0
    assert admin.end_offsets(topic, 2) == [3, 2]
    assert admin.committed_offsets(group, topic, 2) == [-1, -1]
    assert admin.group_members(group) == []

    consumer = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
        assert admin.committed_offsets(group, topic, 2) == [2, -1]
        consumer.subscribe([topic])
        for _ in range(20):
            consumer.consume(1, 0.5)
            if admin.group_members(group):
                break
        assert len(admin.group_members(group)) == 1
    finally:
        consumer.close()


def test_a_refused_request_says_where_and_whether_to_retry(
    kafka_bootstrap: str, unique_topic: Callable[..., str]
) -> None:
    topic = unique_topic()
    admin = KafkaAdmin({"bootstrap.servers": kafka_bootstrap})
    where = re.escape(f"create topic {topic} at {kafka_bootstrap}")
    with pytest.raises(TransportError, match=where) as bad:
        admin.create_topics([topic], partitions=1, replication=1000)
    assert bad.value.retriable is False

    nobody = KafkaAdmin({"bootstrap.servers": "127.0.0.1:1", "log_level": 0}, timeout=1)
    with pytest.raises(TransportError, match=re.escape("list topics at 127.0.0.1:1")) as gone:
        nobody.partition_counts()
    assert gone.value.retriable is True
