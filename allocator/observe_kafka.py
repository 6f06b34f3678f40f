"""Observe, Kafka half: each stage's input topic offsets, read through `KafkaAdmin`.

Apart from `allocator.observe` so that the rate maths, the scrape and everything that only
replays numbers (the simulator, the unit tests) import without confluent-kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from allocator.errors import ObserveError
from allocator.observe import TopicOffsets
from stages.runtime.kafka import KafkaAdmin, TransportError


class KafkaObserver:
    """End and committed offsets of each stage's input topic (the `Observer` of a real
    pipeline); lag and rates come from their differences, in `allocator.observe.Rates`."""

    def __init__(
        self,
        conf: Mapping[str, Any],
        topics: Mapping[str, tuple[str, str]],
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``topics``: stage -> (input topic, consumer group)."""
        self._topics = dict(topics)
        self._clock = clock
        self._conf = dict(conf)
        self._timeout = timeout
        self._admin = self._connect()

    def _connect(self) -> KafkaAdmin:
        try:
            return KafkaAdmin(self._conf, timeout=self._timeout)
        except TransportError as exc:
            raise ObserveError(str(exc), retriable=exc.retriable) from exc

    def offsets(self) -> list[TopicOffsets]:
        try:
            counts = self._admin.partition_counts()
            out = []
            for stage, (topic, group) in self._topics.items():
                partitions = counts.get(topic)
                if partitions is None:
                    continue  # not created yet: nothing to observe for this stage
                end = self._admin.end_offsets(topic, partitions)
                committed = self._admin.committed_offsets(group, topic, partitions)
                out.append(TopicOffsets(stage, topic, self._clock(), tuple(end), tuple(committed)))
        except TransportError as exc:
            # Retriable includes a topic still electing its leaders: the next look will do, with
            # a new client. After the broker holding a group's coordinator was killed and
            # restarted, the old client's offset reads timed out for minutes while a new client's
            # answered at once, and the allocator, blind, never replaced a dead worker (found by
            # the chaos loop, bench/chaos.py).
            self._admin.close()
            self._admin = self._connect()
            raise ObserveError(str(exc), retriable=exc.retriable) from exc
        return out
