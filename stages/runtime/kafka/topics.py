"""Topic and group names, topic creation, and the transport error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic lacks __all__
    AdminClient,
    NewTopic,
)

from stages.errors import JizhiError

REQUESTS_MAX_MESSAGE_BYTES = 4 << 20
"""The requests topic accepts records up to 4 MiB, so an oversized request reaches ingest and is
dead-lettered with a reason instead of being refused invisibly at the client."""


class TransportError(JizhiError):
    """Kafka refused or lost something; ``retriable`` says whether trying again can help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def topic_name(pipeline: str, stage: str) -> str:
    """The input topic of ``stage``: ``requests`` for ingest; ``responses`` and ``dead`` too."""
    return f"jizhi.{pipeline}.{'requests' if stage == 'ingest' else stage}"


def group_id(pipeline: str, stage: str) -> str:
    return f"jizhi.{pipeline}.{stage}"


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
    admin = AdminClient(dict(admin_conf))
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        err = exc.args[0]
        raise TransportError(
            f"cannot list topics at {admin_conf.get('bootstrap.servers')}: {err.str()}",
            retriable=err.retriable(),
        ) from exc
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return []
    per_topic = config or {}
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=partitions,
                replication_factor=replication,
                config=dict(per_topic.get(t, {})),
            )
            for t in wanted
        ],
        operation_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TransportError(
                    f"cannot create topic {name}: {err.str()}", retriable=err.retriable()
                ) from exc
    return created
