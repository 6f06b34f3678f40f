"""Acting on Kafka itself: growing a stage's input topic, and publishing the admission rate and
assignment plans to the control topic (its records: `stages.runtime.control`).

All go through the admin API or a producer; nothing here is on a worker's hot path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from allocator.errors import ActuatorError
from stages.runtime.control import AdmissionLimit, AssignmentPlan, claim_key, plan_key
from stages.runtime.kafka import ControlPublisher, KafkaAdmin, TransportError


def grow_topic(conf: Mapping[str, Any], topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Grow ``topic`` to ``partitions`` (Kafka never shrinks a topic; asking for fewer or the
    same is a no-op here, not an error)."""
    try:
        with KafkaAdmin(conf, timeout=timeout) as admin:
            now = admin.partition_counts().get(topic)
            if now is None or now >= partitions:
                return
            admin.create_partitions(topic, partitions)
    except TransportError as exc:
        raise ActuatorError(str(exc), retriable=exc.retriable) from exc


class AdmissionPublisher:
    """Publishes the admission limit as the latest record of a compacted control topic
    (``jizhi.<pipeline>.control``, key ``admission``), where ingest workers read it."""

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        self._publisher = ControlPublisher(conf, topic)
        self.topic = topic

    def __call__(self, rate: float) -> None:
        try:
            self._publisher.publish(AdmissionLimit(rate), 5.0)
        except TransportError as exc:
            raise ActuatorError(str(exc), retriable=exc.retriable) from exc


class PlanPublisher:
    """Publishes a stage's partition assignment (instance -> partitions) to the control topic
    (key ``assignment/<stage>``). Generations are milliseconds of the wall clock, made strictly
    increasing: a restarted allocator's next plan still supersedes the last one it published."""

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        self._publisher = ControlPublisher(conf, topic)
        self.topic = topic
        self._last = 0

    def forget(self, stage: str, instance: str) -> None:
        """Delete the claim of an instance that no longer runs (killed, so it could not delete
        it itself): its partitions would otherwise stay blocked for the others."""
        try:
            self._publisher.delete(claim_key(stage, instance), 5.0)
        except TransportError as exc:
            raise ActuatorError(str(exc), retriable=exc.retriable) from exc

    def withdraw(self, stage: str) -> None:
        """Delete the stage's plan, once its named workers are gone (the allocator stopped
        them): workers started later find no plan and are group members again, instead of
        idling under a plan that names none of them."""
        try:
            self._publisher.delete(plan_key(stage), 5.0)
        except TransportError as exc:
            raise ActuatorError(str(exc), retriable=exc.retriable) from exc

    def __call__(self, stage: str, owners: Mapping[str, list[int]]) -> int:
        """Publish; returns the plan's generation."""
        self._last = max(self._last + 1, int(time.time() * 1000))
        plan = AssignmentPlan(stage, self._last, {k: sorted(v) for k, v in owners.items()})
        try:
            self._publisher.publish(plan, 5.0)
        except TransportError as exc:
            raise ActuatorError(str(exc), retriable=exc.retriable) from exc
        return plan.generation
