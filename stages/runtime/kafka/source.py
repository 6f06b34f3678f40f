"""The consumer side: a consumer group member feeding a runner with micro-batches, committing
an input offset only once its outputs are acknowledged."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stages import metrics
from stages.runtime.channel import Envelope
from stages.runtime.kafka.errors import consumer_fatal
from stages.runtime.kafka.topics import TransportError
from stages.runtime.offsets import OffsetTracker

if TYPE_CHECKING:
    from stages.runtime.control import AssignmentPlan
    from stages.runtime.kafka.control import PlanControl

log = logging.getLogger(__name__)


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

    With ``control`` (the stage's view of the allocator's control topic), once an assignment plan
    for the stage exists the source leaves the group and follows the plan with a manually
    assigned consumer (`stages.runtime.control.handover`); without a plan it is a plain
    cooperative-sticky group member, as without ``control``.
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
        control: PlanControl | None = None,
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
        self._control = control
        self.mode: Literal["group", "plan"] = "group"
        self.generation: int | None = None
        """The generation of the assignment plan followed (None: group-managed)."""
        self._idle_warned = -1
        self._conf = {
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
        if control is not None and control.plan() is not None:
            self._consumer = self._manual_consumer()
            self.mode = "plan"
        else:
            self._consumer = Consumer(self._conf)
            self._consumer.subscribe(
                [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )

    def _manual_consumer(self) -> Consumer:
        """Same group id (its committed offsets), never a group member: no static membership,
        no assignor."""
        conf = {
            k: v
            for k, v in self._conf.items()
            if k not in ("group.instance.id", "partition.assignment.strategy")
        }
        return Consumer(conf)

    # -- Source -----------------------------------------------------------------------------
    def get_batch(self, max_items: int, max_wait: float, /) -> list[Envelope] | None:
        if self._fatal is not None:
            raise TransportError(f"consumer of {self.topic}: {self._fatal.str()}", retriable=False)
        self._store_finished()
        if self._closing.is_set():
            return None
        if self._control is not None:
            self._follow_plan(self._control)
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
        if self.mode == "plan" and self._control is not None:
            self._control.leave()

    # -- following an assignment plan ------------------------------------------------------------
    def _follow_plan(self, control: PlanControl) -> None:
        plan = control.plan()
        if plan is None:
            return  # no plan (or it was deleted): keep the current mode and partitions
        if self.mode == "group":
            self._leave_group()
        self.generation = plan.generation
        step = control.step(plan, self.assigned)
        if step.release:
            self._hand_back([TopicPartition(self.topic, p) for p in sorted(step.release)])
            self.rebalances += 1
        if step.release or control.claimed != plan.generation:
            control.claim(plan)
            step = control.step(plan, self.assigned)
        if step.take:
            self._consumer.incremental_assign(
                [TopicPartition(self.topic, p) for p in sorted(step.take)]
            )
            self.assigned.update(step.take)
            self.rebalances += 1
            log.info("%s: plan %d: took %s", self._stage, plan.generation, sorted(step.take))
        self._warn_unnamed(control, plan)

    def _warn_unnamed(self, control: PlanControl, plan: AssignmentPlan) -> None:
        if control.instance not in plan.owners and self._idle_warned != plan.generation:
            self._idle_warned = plan.generation
            log.warning(
                "%s: assignment plan %d does not name instance %r: idle until one does",
                self._stage,
                plan.generation,
                control.instance,
            )

    def _leave_group(self) -> None:
        """From group-managed to planned: hand back everything, leave, reopen unassigned."""
        held = [TopicPartition(self.topic, p) for p in sorted(self.assigned)]
        if held:
            self._hand_back(held, unassign=False)  # a group member may not unassign by itself
        self._consumer.close()  # may serve one more revoke: nothing left to commit by then
        self.assigned.clear()
        self._consumer = self._manual_consumer()
        self.mode = "plan"
        self.rebalances += 1
        log.info("%s: left the consumer group to follow the assignment plan", self._stage)

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
        if consumer_fatal(err):
            self._fatal = err
        log.warning("consumer of %s[%s]: %s", self.topic, msg.partition(), err.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        self.assigned.update(p.partition for p in partitions)
        log.info("%s: assigned %s", self._stage, sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Let the revoked partitions' in-flight events finish, commit them, then hand over."""
        self.rebalances += 1
        mine = [p for p in partitions if p.partition in self.assigned]
        if mine:  # none when a planned source's old group consumer closes after handing back
            self._hand_back(mine, unassign=False)

    def _hand_back(self, partitions: list[TopicPartition], *, unassign: bool = True) -> None:
        """Stop taking the partitions' messages, let their in-flight events finish, commit, and
        (``unassign``: outside a rebalance callback) stop fetching them."""
        keys = [(p.topic, p.partition) for p in partitions]
        self.assigned.difference_update(p.partition for p in partitions)
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
        if unassign:
            self._consumer.incremental_unassign(partitions)
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
        if consumer_fatal(err):
            self._fatal = err
        log.warning("consumer of %s: %s", self.topic, err.str())
