"""The producer side: one idempotent producer per worker, and the Sink writing through it."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from stages import metrics
from stages.runtime.channel import Envelope
from stages.runtime.kafka.topics import TransportError

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
Encoder = Callable[[Any], tuple[bytes | None, bytes, Headers | None]]
"""value -> (key, payload, headers) for one output record."""


class SharedProducer:
    """One idempotent producer per worker, polled by its own thread so delivery reports (which
    finish tickets) keep flowing whatever the runners are doing."""

    def __init__(self, conf: Mapping[str, Any], *, pipeline: str) -> None:
        full = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.size": 256 * 1024,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            **conf,
            "error_cb": self._on_error,
        }
        self._producer = Producer(full)
        self._error: KafkaError | None = None
        self._pipeline = pipeline
        self._owners: dict[str, str] = {}
        self._stop = threading.Event()
        self.delivered = 0
        self.failed = 0
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    def owns(self, topic: str, pipeline: str) -> None:
        """Label delivery errors to ``topic`` with ``pipeline`` (a worker may serve several)."""
        self._owners[topic] = pipeline

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._error = err
        log.warning("producer: %s", err.str())

    def _delivered(self, ticket: Any, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            self._error = err
            topic = msg.topic() or ""
            pipeline = self._owners.get(topic, self._pipeline)
            metrics.DELIVERY_ERRORS.labels(pipeline, topic).inc()
            log.error("delivery to %s failed: %s", msg.topic(), err.str())
            return
        self.delivered += 1
        if ticket is not None:
            ticket.done()

    def produce(self, topic: str, items: Sequence[Envelope], encode: Encoder) -> None:
        """Queue records; their tickets are finished when the broker acknowledges them."""
        err = self._error
        if err is not None:
            raise TransportError(f"producer to {topic}: {err.str()}", retriable=err.retriable())
        p = self._producer
        for env in items:
            key, value, headers = encode(env.value)
            callback = functools.partial(self._delivered, env.ticket)
            while True:
                try:
                    p.produce(topic, value, key, headers=headers, on_delivery=callback)
                    break
                except BufferError:
                    # The local queue is full: that is backpressure, wait for deliveries.
                    p.poll(0.05)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still undelivered."""
        left: int = self._producer.flush(timeout)
        return left

    def close(self, timeout: float = 30.0) -> int:
        left = self.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=1.0)
        return left


class KafkaSink:
    """A runner's Sink writing to one topic through the worker's shared producer."""

    def __init__(self, producer: SharedProducer, topic: str, encode: Encoder) -> None:
        self._producer = producer
        self.topic = topic
        self._encode = encode

    def put_many(self, items: Sequence[Envelope], /) -> None:
        self._producer.produce(self.topic, items, self._encode)

    def close(self) -> None:
        self._producer.flush()
