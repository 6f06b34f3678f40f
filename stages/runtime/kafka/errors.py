"""Errors of the Kafka runtime, under the project's one root, `JizhiError`."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError

from stages.errors import JizhiError


class TransportError(JizhiError):
    """Kafka refused or lost something; ``retriable`` says whether trying again can help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def consumer_fatal(err: Any) -> bool:
    """Whether a consumer's error means the consumer is finished. librdkafka reports a fatal
    consumer error (a static member fenced by another with its ``group.instance.id``, as after a
    group coordinator fails over) as code ``_FATAL`` with ``fatal()`` false: taken as a warning,
    the worker lived on with no partitions, and its stage answered nothing until restarted by
    hand (found by the chaos loop, bench/chaos.py)."""
    return bool(err.fatal()) or err.code() == KafkaError._FATAL
