"""Exactly-once for one chain: consume, process, produce and commit in one Kafka transaction."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stages.runtime.channel import BoundedQueue, Envelope
from stages.runtime.kafka.errors import consumer_fatal
from stages.runtime.kafka.producer import Encoder
from stages.runtime.kafka.source import _Lag, consume_batch
from stages.runtime.kafka.topics import TransportError
from stages.runtime.runner import BatchPolicy, Routes, StageRunner
from stages.stage import Stage

log = logging.getLogger(__name__)


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
        transaction_max: int = 1024,
        transaction_window_s: float = 0.02,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """A transaction takes up to ``transaction_max`` messages or what arrives within
        ``transaction_window_s`` after the first: a commit costs a broker round trip per
        partition, so one per micro-batch of 64 spent most of the time committing."""
        self.topic = topic
        self._txn_max = max(1, transaction_max)
        self._txn_window = transaction_window_s
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
            wait = max(self._policy.max_wait_ms / 1000.0, self._txn_window)
            size = max(self._policy.max_size, self._txn_max)
            while not self._stop.is_set():
                msgs = self._take(consume_batch(self._consumer, size, self._idle_wait, wait))
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
                if consumer_fatal(err):
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
            step = self._policy.max_size  # the stages still see micro-batches of their size
            for i, runner in enumerate(self._runners):
                items = batch if i == 0 else self._collect[i - 1].take()
                for j in range(0, len(items), step):
                    runner.handle(items[j : j + step])
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
