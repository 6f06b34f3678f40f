"""Topic and group names, and topic creation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stages.pipeline import Pipeline
from stages.runtime.kafka.admin import KafkaAdmin
from stages.runtime.kafka.errors import TransportError as TransportError  # noqa: PLC0414

REQUESTS_MAX_MESSAGE_BYTES = 4 << 20
"""The requests topic accepts records up to 4 MiB, so an oversized request reaches ingest and is
dead-lettered with a reason instead of being refused invisibly at the client."""


def topic_name(pipeline: str, suffix: str) -> str:
    """``jizhi.<pipeline>.<suffix>``: a stage's input topic (by the stage's name), or one of the
    pipeline's own: ``requests``, ``responses``, ``dead``, ``control``."""
    return f"jizhi.{pipeline}.{suffix}"


def input_topic(pipeline: Pipeline, stage: str) -> str:
    """Where ``stage`` reads: the requests topic at the edge, its own topic otherwise."""
    if pipeline.spec(stage).takes == "requests":
        return topic_name(pipeline.name, "requests")
    return topic_name(pipeline.name, stage)


def output_topic(pipeline: Pipeline, stage: str) -> str:
    """Where ``stage``'s events go: the next stage's input, or the responses after the last."""
    nxt = pipeline.after(stage)
    return topic_name(pipeline.name, "responses") if nxt is None else input_topic(pipeline, nxt)


def group_id(pipeline: str, stage: str) -> str:
    return f"jizhi.{pipeline}.{stage}"


def pipeline_topics(pipeline: Pipeline | str) -> list[str]:
    """Every topic a pipeline uses: one input per stage, responses, dead letters. Given only a
    name (a client, which does not know the stages), the topics clients use."""
    if isinstance(pipeline, str):
        return [topic_name(pipeline, t) for t in ("requests", "responses", "dead")]
    inputs = [input_topic(pipeline, s) for s in pipeline.names]
    return [*inputs, topic_name(pipeline.name, "responses"), topic_name(pipeline.name, "dead")]


def ensure_pipeline_topics(
    conf: Mapping[str, Any], pipeline: Pipeline | str, *, partitions: int, replication: int
) -> list[str]:
    """Create the pipeline's topics that do not exist yet (idempotent; safe to race)."""
    name = pipeline if isinstance(pipeline, str) else pipeline.name
    return ensure_topics(
        conf,
        pipeline_topics(pipeline),
        partitions=partitions,
        replication=replication,
        config={
            topic_name(name, "requests"): {"max.message.bytes": str(REQUESTS_MAX_MESSAGE_BYTES)}
        },
    )


def ensure_topics(
    admin_conf: Mapping[str, Any],
    topics: Iterable[str],
    *,
    partitions: int,
    replication: int,
    config: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create missing topics (``config`` maps a topic to its topic configs); existing ones are
    left as they are, whatever their shape. Returns the names created."""
    # Listed first so that a principal allowed to describe but not to create topics can still
    # start against topics an operator made.
    with KafkaAdmin(admin_conf, timeout=timeout) as admin:
        existing = admin.partition_counts()
        wanted = [t for t in topics if t not in existing]
        return admin.create_topics(
            wanted, partitions=partitions, replication=replication, config=config
        )
