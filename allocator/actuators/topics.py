"""Acting on Kafka itself: growing a stage's input topic, and publishing the admission rate.

Both go through the admin API or a producer; nothing here is on a worker's hot path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from allocator.errors import ActuatorError


def grow_topic(conf: Mapping[str, Any], topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Grow ``topic`` to ``partitions`` (Kafka never shrinks a topic; asking for fewer or the
    same is a no-op here, not an error)."""
    from confluent_kafka import KafkaException  # noqa: PLC0415
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # noqa: PLC0415
        AdminClient,
        NewPartitions,
    )

    admin = AdminClient(dict(conf))
    meta = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None or len(meta.partitions) >= partitions:
        return
    fut = admin.create_partitions([NewPartitions(topic, partitions)])[topic]
    try:
        fut.result(timeout)
    except KafkaException as exc:
        err = exc.args[0]
        raise ActuatorError(
            f"cannot grow {topic} to {partitions} partitions: {err.str()}",
            retriable=err.retriable(),
        ) from exc


class AdmissionPublisher:
    """Publishes the admission limit as the latest record of a compacted control topic
    (``jizhi.<pipeline>.control``, key ``admission``), where ingest workers can read it."""

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        from confluent_kafka import Producer  # noqa: PLC0415

        self._producer = Producer({**conf, "linger.ms": 0})
        self.topic = topic

    def __call__(self, rate: float) -> None:
        payload = json.dumps({"rate": rate}).encode()
        self._producer.produce(self.topic, payload, b"admission")
        left = self._producer.flush(5.0)
        if left:
            raise ActuatorError(f"admission rate not delivered to {self.topic}", retriable=True)
