"""The one Kafka admin client of jizhi: every topic and consumer-group request goes through here.

One place, so that every admin failure reads the same way (what was asked, of which cluster, of
which topic or group) and carries the same answer to "will trying again help?", instead of each
caller unpacking ``KafkaException.args[0]`` its own way or not at all. (The one other admin
client is `stages.runtime.kafka.reach`'s first, silenced look at an address.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic lacks __all__
    AdminClient,
    ClusterMetadata,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from stages.runtime.kafka.errors import TransportError

_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
# Answers that mean "already as asked": creating a topic that exists, deleting one that is gone.
_EXISTS = frozenset({KafkaError.TOPIC_ALREADY_EXISTS})
_UNKNOWN = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART})


def _retriable(err: KafkaError) -> bool:
    """librdkafka does not flag every passing admin error retriable: a topic still electing its
    leaders answers NOT_LEADER_FOR_PARTITION for a few seconds, a coordinator moves. Callers that
    look again later (the allocator, a worker waiting for its topics) must not die of them."""
    return bool(err.retriable()) or err.code() in _TRANSIENT


class KafkaAdmin:
    """One admin connection to a cluster, with the few requests jizhi makes of it.

    ``timeout`` (seconds) bounds each request unless the call names its own: admin requests run
    between batches or in a control loop, where waiting on a dead broker forever is worse than an
    error to retry.
    """

    def __init__(self, conf: Mapping[str, Any], *, timeout: float = 30.0) -> None:
        self.bootstrap = str(conf.get("bootstrap.servers", "?"))
        self.timeout = timeout
        self._conf = dict(conf)
        self._readers: dict[str, Consumer] = {}
        try:
            self._client = AdminClient(dict(conf))
        except KafkaException as exc:
            raise self._error("cannot configure an admin client", exc) from exc

    # -- metadata --------------------------------------------------------------------------------
    def partition_counts(self, *, timeout: float | None = None) -> dict[str, int]:
        """Partitions per topic. A topic whose metadata carries an error (just created, leaders
        not elected yet) is left out: to every caller it is not usable yet.

        Always lists the whole cluster: asking for one topic by name lets a broker with
        ``auto.create.topics.enable`` create it with default settings.
        """
        meta = self._metadata("cannot list topics", timeout)
        return {name: len(t.partitions) for name, t in meta.topics.items() if t.error is None}

    def brokers(self, *, timeout: float | None = None) -> set[int]:
        """Node ids in the cluster's metadata: an open port does not mean a broker has joined."""
        return {int(b) for b in self._metadata("cannot list brokers", timeout).brokers}

    # -- topics ----------------------------------------------------------------------------------
    def create_topics(
        self,
        topics: Iterable[str],
        /,
        *,
        partitions: int,
        replication: int,
        config: Mapping[str, Mapping[str, str]] | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Create ``topics`` (``config``: topic -> its topic configs); returns the names created.

        A topic that already exists is not an error, whatever its shape: two workers starting
        together both ask, and neither must fail.
        """
        wait = self._timeout(timeout)
        per_topic = config or {}
        new = [
            NewTopic(
                t,
                num_partitions=partitions,
                replication_factor=replication,
                config=dict(per_topic.get(t, {})),
            )
            for t in topics
        ]
        if not new:
            return []
        futures = self._call(
            "cannot create topics", lambda: self._client.create_topics(new, operation_timeout=wait)
        )
        created = []
        for name, fut in futures.items():
            if self._wait(fut, f"cannot create topic {name}", wait, ok=_EXISTS):
                created.append(name)
        return created

    def create_partitions(self, topic: str, total: int, /, *, timeout: float | None = None) -> None:
        """Grow ``topic`` to ``total`` partitions. Kafka never shrinks a topic; the broker refuses
        a ``total`` not above the current count (INVALID_PARTITIONS)."""
        wait = self._timeout(timeout)
        doing = f"cannot grow topic {topic} to {total} partitions"
        futures = self._call(
            doing,
            lambda: self._client.create_partitions(
                [NewPartitions(topic, total)], operation_timeout=wait
            ),
        )
        self._wait(futures[topic], doing, wait)

    def delete_topics(self, topics: Sequence[str], /, *, timeout: float | None = None) -> list[str]:
        """Delete ``topics``; returns the names deleted. A topic already gone is not an error,
        for the same reason as in `create_topics`."""
        if not topics:
            return []
        wait = self._timeout(timeout)
        futures = self._call(
            "cannot delete topics",
            lambda: self._client.delete_topics(list(topics), operation_timeout=wait),
        )
        deleted = []
        for name, fut in futures.items():
            if self._wait(fut, f"cannot delete topic {name}", wait, ok=_UNKNOWN):
                deleted.append(name)
        return deleted

    # -- offsets and groups ----------------------------------------------------------------------
    def end_offsets(
        self, topic: str, partitions: int, /, *, timeout: float | None = None
    ) -> list[int]:
        """The next offset to be written, per partition ``0..partitions-1``: lag and arrival
        rates are measured against it."""
        wait = self._timeout(timeout)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        doing = f"cannot read end offsets of {topic}"
        futures = self._call(
            doing,
            lambda: self._client.list_offsets(dict.fromkeys(tps, latest), request_timeout=wait),
        )
        out = []
        for tp in tps:
            info = self._result(futures[tp], f"{doing}[{tp.partition}]", wait)
            out.append(int(info.offset))
        return out

    def committed_offsets(
        self, group: str, topic: str, partitions: int, /, *, timeout: float | None = None
    ) -> list[int]:
        """``group``'s committed offset per partition ``0..partitions-1``; -1 where it has
        committed nothing, so that callers need not know librdkafka's OFFSET_INVALID.

        Read through a consumer of the group that never joins it, not the admin API: the admin
        client's ListConsumerGroupOffsets crashes the process (a NULL consumer group in
        librdkafka's OffsetFetch handler) whenever the coordinator answers NOT_COORDINATOR or is
        still loading, as on a fresh or restarted broker (librdkafka#5040,
        confluent-kafka-python#1982); a consumer has the group handle that answer needs."""
        wait = self._timeout(timeout)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        doing = f"cannot read offsets of group {group} on {topic}"
        reader = self._reader(group, doing)
        try:
            got = reader.committed(tps, timeout=wait)
        except KafkaException as exc:
            raise self._error(doing, exc) from exc
        failed = [t.error for t in got if t.error is not None]
        if failed:
            raise self._error(doing, KafkaException(failed[0]))
        by_partition = {t.partition: int(t.offset) for t in got if t.topic == topic}
        return [max(-1, by_partition.get(p, -1)) for p in range(partitions)]

    def _reader(self, group: str, doing: str) -> Consumer:
        reader = self._readers.get(group)
        if reader is None:
            conf = {
                **self._conf,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
            try:
                reader = Consumer(conf)
            except KafkaException as exc:
                raise self._error(doing, exc) from exc
            self._readers[group] = reader
        return reader

    def group_members(self, group: str, /, *, timeout: float | None = None) -> list[str]:
        """Member ids of ``group``'s current members (a group that never existed has none).
        A worker following a plan waits for the group to empty before taking partitions."""
        wait = self._timeout(timeout)
        doing = f"cannot describe group {group}"
        futures = self._call(
            doing,
            lambda: self._client.describe_consumer_groups([group], request_timeout=wait),
        )
        return [str(m.member_id) for m in self._result(futures[group], doing, wait).members]

    # -- plumbing --------------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the client now, on this thread. Left to the garbage collector, a dropped
        client can be collected on librdkafka's background thread (a collection triggered by an
        admin result callback there), which destroys the handle from its own thread and crashes
        the process (confluent-kafka-python#1761, #2129); a short-lived admin must be closed."""
        for reader in self._readers.values():
            reader.close()  # it never joined the group: nothing to leave or commit
        self._readers.clear()
        self._client.__exit__(None, None, None)

    def __enter__(self) -> KafkaAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    def _metadata(self, doing: str, timeout: float | None) -> ClusterMetadata:
        wait = self._timeout(timeout)
        meta: ClusterMetadata = self._call(doing, lambda: self._client.list_topics(timeout=wait))
        return meta

    def _call(self, doing: str, request: Callable[[], Any]) -> Any:
        """Issue a request; a refusal before it left (invalid arguments, no broker) is raised
        here rather than from its future."""
        try:
            return request()
        except KafkaException as exc:
            raise self._error(doing, exc) from exc

    def _result(self, fut: Future[Any], doing: str, timeout: float) -> Any:
        try:
            return fut.result(timeout)
        except (KafkaException, TimeoutError) as exc:
            raise self._error(doing, exc) from exc

    def _wait(
        self, fut: Future[Any], doing: str, timeout: float, *, ok: frozenset[int] = frozenset()
    ) -> bool:
        """True when the request succeeded, False when it failed with a code in ``ok``."""
        try:
            fut.result(timeout)
        except KafkaException as exc:
            err = _kafka_error(exc)
            if err is not None and err.code() in ok:
                return False
            raise self._error(doing, exc) from exc
        except TimeoutError as exc:
            raise self._error(doing, exc) from exc
        return True

    def _error(self, doing: str, exc: Exception) -> TransportError:
        err = _kafka_error(exc)
        if err is not None:
            return TransportError(
                f"{doing} at {self.bootstrap}: {err.str()}", retriable=_retriable(err)
            )
        if isinstance(exc, TimeoutError):
            return TransportError(f"{doing} at {self.bootstrap}: no answer in time", retriable=True)
        return TransportError(f"{doing} at {self.bootstrap}: {exc}", retriable=False)


def _kafka_error(exc: Exception) -> KafkaError | None:
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None
