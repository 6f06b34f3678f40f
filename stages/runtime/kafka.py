"""Kafka consumer groups and producers behind the runner's Source and Sink: the only module of
stages/ that imports confluent-kafka.

At-least-once (the default): an input offset is stored for commit only once the output it produced
(the next stage's event, an answer, or a dead letter) has been acknowledged by the broker;
librdkafka then commits stored offsets every ``auto.commit.interval.ms``, and the source commits
synchronously on revoke and on close. On a cooperative rebalance the revoked partitions' in-flight
work is given time to finish and is committed before the partitions are handed over.

Exactly-once (optional, `TransactionalChain`): one synchronous loop per chain consumes a batch,
runs every stage of the chain on it, produces the outputs and commits the input offsets in one
Kafka transaction. Readers use ``read_committed`` (librdkafka's default), so aborted outputs are
never seen.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic lacks __all__
    AdminClient,
    NewTopic,
)

from stages import metrics
from stages.errors import JizhiError
from stages.runtime.channel import BoundedQueue, Envelope
from stages.runtime.offsets import OffsetTracker
from stages.runtime.runner import BatchPolicy, Routes, StageRunner
from stages.stage import Stage

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
Encoder = Callable[[Any], tuple[bytes | None, bytes, Headers | None]]
"""value -> (key, payload, headers) for one output record."""

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


class _Lag:
    """Consumer lag per assigned partition, from librdkafka's statistics, as a gauge."""

    def __init__(self, pipeline: str, stage: str, assigned: set[int]) -> None:
        self._pipeline = pipeline
        self._stage = stage
        self._assigned = assigned

    def on_stats(self, raw: str) -> None:
        try:
            stats = json.loads(raw)
        except ValueError:
            return
        for topic, tdata in stats.get("topics", {}).items():
            for pid, pdata in tdata.get("partitions", {}).items():
                lag = pdata.get("consumer_lag", -1)
                if pid == "-1" or lag < 0 or int(pid) not in self._assigned:
                    continue
                metrics.CONSUMER_LAG.labels(self._pipeline, self._stage, topic, pid).set(lag)

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        for p in partitions:
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self._pipeline, self._stage, p.topic, str(p.partition))


def consume_batch(
    consumer: Consumer, max_items: int, idle_wait: float, max_wait: float
) -> list[Message]:
    """Up to ``max_items`` messages: wait ``idle_wait`` for the first, then ``max_wait`` for the
    rest. Two calls, because ``consume(n, t)`` waits the whole ``t`` unless ``n`` messages come
    (measured with confluent-kafka 2.16: ``consume(500, 0.5)`` with 18 messages queued takes
    0.5 s; some 2.13.x releases returned early instead), which would add ``idle_wait`` to the
    latency of every batch smaller than ``max_items``."""
    first = consumer.consume(1, idle_wait)
    if not first or max_items <= 1:
        return first
    return first + consumer.consume(max_items - 1, max_wait)


class KafkaSource:
    """One consumer group member feeding a runner with micro-batches of raw message values.

    Only the runner's thread calls ``get_batch`` (and so the rebalance callbacks, which librdkafka
    serves inside ``consume``); tickets may be finished from the producer's thread.
    """

    def __init__(
        self,
        conf: Mapping[str, Any],
        topic: str,
        *,
        pipeline: str,
        stage: str,
        idle_wait: float = 0.1,
        revoke_timeout: float = 15.0,
    ) -> None:
        self.topic = topic
        self._stage = stage
        self._idle_wait = idle_wait
        self._revoke_timeout = revoke_timeout
        self._tracker = OffsetTracker()
        self._closing = threading.Event()
        self._finished = False
        self._fatal: KafkaError | None = None
        self.assigned: set[int] = set()
        self.rebalances = 0
        self._lag = _Lag(pipeline, stage, self.assigned)
        full = {
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "statistics.interval.ms": 5000,
            **conf,
            "stats_cb": self._lag.on_stats,
            "error_cb": self._on_error,
        }
        self._consumer = Consumer(full)
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # -- Source -----------------------------------------------------------------------------
    def get_batch(self, max_items: int, max_wait: float, /) -> list[Envelope] | None:
        if self._fatal is not None:
            raise TransportError(f"consumer of {self.topic}: {self._fatal.str()}", retriable=False)
        self._store_finished()
        if self._closing.is_set():
            return None
        out: list[Envelope] = []
        for msg in consume_batch(self._consumer, max_items, self._idle_wait, max_wait):
            err = msg.error()
            if err is not None:
                self._message_error(msg, err)
                continue
            partition = msg.partition()
            offset = msg.offset()
            if partition is None or offset is None or partition not in self.assigned:
                # Fetched before a revoke served inside this very consume(): the new owner
                # reads it from the committed position, so dropping it loses nothing.
                continue
            ticket = self._tracker.track(self.topic, partition, offset)
            out.append(Envelope(msg.value() or b"", ticket))
        return out

    def depth(self) -> int:
        return self._tracker.in_flight()

    def close(self) -> None:
        """Stop fetching; the consumer itself is closed by `finish` once outputs are flushed."""
        self._closing.set()

    def finish(self, timeout: float = 30.0) -> None:
        """Commit what finished and leave the group; call after every sink is flushed."""
        if self._finished:
            return
        self._finished = True
        end = time.monotonic() + timeout
        while self._tracker.in_flight() and time.monotonic() < end:
            time.sleep(0.01)
        left = self._tracker.in_flight()
        if left:
            log.warning(
                "%s: %d events unfinished at shutdown; they will be redone", self.topic, left
            )
        self._store_finished()
        self._commit(None)
        self._consumer.close()

    # -- internals --------------------------------------------------------------------------
    def _store_finished(self) -> None:
        moved = self._tracker.advance()
        if not moved:
            return
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in moved.items()]
            )
        except KafkaException as exc:
            # _STATE: a partition was unassigned in between; its next owner redoes the rest.
            log.info("%s: store_offsets: %s", self.topic, exc.args[0].str())

    def _commit(self, offsets: list[TopicPartition] | None) -> None:
        try:
            if offsets is None:
                self._consumer.commit(asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() != KafkaError._NO_OFFSET:
                log.warning("%s: commit failed: %s", self.topic, err.str())

    def _message_error(self, msg: Message, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            self._fatal = err
        log.warning("consumer of %s[%s]: %s", self.topic, msg.partition(), err.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        self.assigned.update(p.partition for p in partitions)
        log.info("%s: assigned %s", self._stage, sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Let the revoked partitions' in-flight events finish, commit them, then hand over."""
        self.rebalances += 1
        keys = [(p.topic, p.partition) for p in partitions]
        end = time.monotonic() + self._revoke_timeout
        while self._tracker.in_flight(keys) and time.monotonic() < end:
            time.sleep(0.005)
        left = self._tracker.in_flight(keys)
        if left:
            log.warning("%s: %d events of revoked partitions unfinished; redone", self._stage, left)
        self._store_finished()
        offsets = [
            TopicPartition(t, p, pos)
            for (t, p) in keys
            if (pos := self._tracker.position((t, p))) is not None
        ]
        if offsets:
            self._commit(offsets)
        self._tracker.forget(keys)
        self.assigned.difference_update(p.partition for p in partitions)
        self._lag.drop(partitions)
        log.info("%s: revoked %s", self._stage, sorted(p.partition for p in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (session timed out): another member may already own them, so no commit."""
        self.rebalances += 1
        self._tracker.forget((p.topic, p.partition) for p in partitions)
        self.assigned.difference_update(p.partition for p in partitions)
        self._lag.drop(partitions)
        log.warning("%s: lost %s", self._stage, sorted(p.partition for p in partitions))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
        log.warning("consumer of %s: %s", self.topic, err.str())


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
        self._stop = threading.Event()
        self.delivered = 0
        self.failed = 0
        self._poller = threading.Thread(target=self._poll, name="kafka-producer-poll", daemon=True)
        self._poller.start()

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
            metrics.DELIVERY_ERRORS.labels(self._pipeline, msg.topic() or "").inc()
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


# -- exactly-once -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    encode: Encoder


@dataclass(frozen=True, slots=True)
class ChainOutputs:
    """Where a chain's results go: the next stage's topic (None after rank), answers, dead."""

    forward: Output | None
    answers: Output
    dead: Output


class _Collect:
    """A Sink that keeps what it is given, for the synchronous transactional loop."""

    def __init__(self) -> None:
        self.items: list[Envelope] = []

    def put_many(self, items: Sequence[Envelope], /) -> None:
        self.items.extend(items)

    def close(self) -> None:
        return None

    def take(self) -> list[Envelope]:
        items, self.items = self.items, []
        return items


class _AbortedError(Exception):
    """The batch's transaction was aborted and the consumer rewound to the batch's start."""


class TransactionalChain:
    """Exactly-once for one chain: consume a batch, run all its stages, produce the outputs and
    commit the input offsets in one transaction, then the next batch.

    Rebalance callbacks run inside ``consume``, between transactions, so a revoke never finds
    work in flight. After an abort the stages are rebuilt (``make_stages``), because stage state
    such as ingest's de-duplication window is not transactional and must not remember requests
    whose outputs were rolled back.
    """

    def __init__(
        self,
        make_stages: Callable[[], Sequence[Stage[Any]]],
        topic: str,
        *,
        consumer_conf: Mapping[str, Any],
        producer_conf: Mapping[str, Any],
        outputs: ChainOutputs,
        pipeline: str,
        stage: str,
        policy: BatchPolicy | None = None,
        first_takes_events: bool = True,
        decode_first: Callable[[Any], Any] | None = None,
        idle_wait: float = 0.1,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self._make_stages = make_stages
        self._outputs = outputs
        self._pipeline = pipeline
        self._stage = stage
        self._policy = policy or BatchPolicy()
        self._first_takes_events = first_takes_events
        self._decode_first = decode_first
        self._idle_wait = idle_wait
        self._timeout = timeout
        self._clock = clock
        self.assigned: set[int] = set()
        self.rebalances = 0
        self.transactions = 0
        self.aborts = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._lag = _Lag(pipeline, stage, self.assigned)
        self._consumer = Consumer(
            {
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "statistics.interval.ms": 5000,
                **consumer_conf,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "stats_cb": self._lag.on_stats,
            }
        )
        self._producer = Producer(
            {
                "linger.ms": 2,
                "batch.size": 256 * 1024,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",
                "transaction.timeout.ms": 10_000,
                **producer_conf,
            }
        )
        self._thread: threading.Thread | None = None
        self._stages: list[Stage[Any]] = []
        self._runners: list[StageRunner] = []
        self._collect: list[_Collect] = []
        self._answers = _Collect()
        self._dead = _Collect()

    # -- the same surface as Chain, for the worker ------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"txn-{self._stage}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop after the transaction in progress."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._producer.init_transactions(self._timeout)
            self._consumer.subscribe(
                [self.topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_revoke,
            )
            self._open_stages()
            wait = self._policy.max_wait_ms / 1000.0
            while not self._stop.is_set():
                msgs = self._take(
                    consume_batch(self._consumer, self._policy.max_size, self._idle_wait, wait)
                )
                if not msgs:
                    continue
                try:
                    self._transact(msgs)
                except _AbortedError:
                    self.aborts += 1
                    self._close_stages()
                    self._open_stages()
        except BaseException as exc:
            self.error = exc
            log.exception("transactional chain from %s stopped", self.topic)
        finally:
            self._close_stages()
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._producer.flush(1.0)

    def _take(self, msgs: list[Message]) -> list[Message]:
        out = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise TransportError(f"consumer of {self.topic}: {err.str()}", retriable=False)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer of %s[%s]: %s", self.topic, msg.partition(), err.str())
                continue
            if msg.partition() in self.assigned:
                out.append(msg)
        return out

    def _open_stages(self) -> None:
        self._stages = list(self._make_stages())
        for stage in self._stages:
            stage.open()
        self._collect = [_Collect() for _ in self._stages]
        dummy = BoundedQueue(1)
        last = len(self._stages) - 1
        self._runners = [
            StageRunner(
                stage,
                dummy,
                Routes(
                    forward=None
                    if i == last and self._outputs.forward is None
                    else self._collect[i],
                    answers=self._answers,
                    dead=self._dead,
                ),
                pipeline=self._pipeline,
                policy=self._policy,
                takes_events=self._first_takes_events or i > 0,
                decode=self._decode_first if i == 0 else None,
                clock=self._clock,
            )
            for i, stage in enumerate(self._stages)
        ]

    def _close_stages(self) -> None:
        stages, self._stages = self._stages, []
        for stage in stages:
            try:
                stage.close()
            except Exception:
                log.exception("closing stage %s", stage.name)

    def _transact(self, msgs: list[Message]) -> None:
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for msg in msgs:
            p, o = msg.partition(), msg.offset()
            assert p is not None and o is not None
            first.setdefault(p, o)
            last[p] = o
        batch = [Envelope(msg.value() or b"") for msg in msgs]
        producer = self._producer
        producer.begin_transaction()
        try:
            for i, runner in enumerate(self._runners):
                items = batch if i == 0 else self._collect[i - 1].take()
                if items:
                    runner.handle(items)
            out = self._outputs
            if out.forward is not None:
                self._produce(out.forward, self._collect[-1].take())
            self._produce(out.answers, self._answers.take())
            self._produce(out.dead, self._dead.take())
            offsets = [TopicPartition(self.topic, p, o + 1) for p, o in last.items()]
            producer.send_offsets_to_transaction(
                offsets, self._consumer.consumer_group_metadata(), self._timeout
            )
            self._commit()
            self.transactions += 1
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise TransportError(
                    f"transaction from {self.topic}: {err.str()}", retriable=False
                ) from exc
            log.warning("transaction from %s aborted: %s", self.topic, err.str())
            try:
                self._abort(first)
            except KafkaException as again:
                raise TransportError(
                    f"abort of a transaction from {self.topic}: {again.args[0].str()}",
                    retriable=False,
                ) from again
            raise _AbortedError from exc
        except BaseException:
            with contextlib.suppress(Exception):
                producer.abort_transaction(self._timeout)
            raise
        finally:
            for c in (*self._collect, self._answers, self._dead):
                c.take()

    def _produce(self, output: Output, items: list[Envelope]) -> None:
        p = self._producer
        for env in items:
            key, value, headers = output.encode(env.value)
            while True:
                try:
                    p.produce(output.topic, value, key, headers=headers)
                    break
                except BufferError:
                    p.poll(0.05)

    def _commit(self) -> None:
        for attempt in range(5):
            try:
                self._producer.commit_transaction(self._timeout)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or attempt == 4:
                    raise
                log.info("commit of transaction from %s retried: %s", self.topic, err.str())

    def _abort(self, first: Mapping[int, int]) -> None:
        self._producer.abort_transaction(self._timeout)
        for p, o in first.items():
            if p not in self.assigned:
                continue
            try:
                self._consumer.seek(TopicPartition(self.topic, p, o))
            except KafkaException as exc:
                log.info("rewind of %s[%d] failed: %s", self.topic, p, exc.args[0].str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        self.assigned.update(p.partition for p in partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Between transactions: nothing is in flight, everything consumed is committed.
        self.rebalances += 1
        self.assigned.difference_update(p.partition for p in partitions)
        self._lag.drop(partitions)
