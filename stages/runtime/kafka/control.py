"""Reading and writing the control topic ``jizhi.<pipeline>.control`` (records and the hand-over
rule: `stages.runtime.control`).

`ControlPublisher` is what the allocator writes with; `ControlFollower` is a worker's reader: it
reads the topic from the beginning at start (`catch_up`) and then follows it in a small daemon
thread; `PlanControl` is one stage's view of it, which `KafkaSource` consults between batches.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stages.runtime.control import (
    AssignmentPlan,
    Claim,
    ControlRecord,
    ControlState,
    Step,
    claim_key,
    encode,
    handover,
)
from stages.runtime.kafka.admin import KafkaAdmin
from stages.runtime.kafka.topics import TransportError, ensure_topics

log = logging.getLogger(__name__)

# Consumer-group keys that must not reach a plain reader or producer of the control topic.
_GROUP_KEYS = ("group.id", "group.instance.id", "partition.assignment.strategy")


def control_topic(pipeline: str) -> str:
    return f"jizhi.{pipeline}.control"


def ensure_control_topic(conf: Mapping[str, Any], pipeline: str, *, replication: int = 1) -> str:
    """Create the compacted, single-partition control topic if it is missing."""
    topic = control_topic(pipeline)
    ensure_topics(
        conf,
        [topic],
        partitions=1,
        replication=replication,
        config={topic: {"cleanup.policy": "compact"}},
    )
    return topic


def _plain(conf: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if k not in _GROUP_KEYS}


class ControlPublisher:
    """Writes control records synchronously: ``publish`` returns once the broker has the record,
    with its offset."""

    def __init__(self, conf: Mapping[str, Any], topic: str) -> None:
        self._producer = Producer(
            {**_plain(conf), "linger.ms": 0, "acks": "all", "enable.idempotence": True}
        )
        self.topic = topic
        self._lock = threading.Lock()

    def _send(self, key: bytes, value: bytes | None, timeout: float) -> int:
        got: list[tuple[KafkaError | None, int]] = []

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            got.append((err, msg.offset() if err is None else -1))

        with self._lock:
            self._producer.produce(self.topic, value, key, on_delivery=on_delivery)
            self._producer.flush(timeout)
        if not got:
            raise TransportError(
                f"control record {key!r} not delivered to {self.topic}", retriable=True
            )
        err, offset = got[0]
        if err is not None:
            raise TransportError(
                f"control record {key!r} to {self.topic}: {err.str()}", retriable=err.retriable()
            )
        return offset

    def publish(self, record: ControlRecord, /, timeout: float = 10.0) -> int:
        key, value = encode(record)
        return self._send(key, value, timeout)

    def delete(self, key: str, /, timeout: float = 10.0) -> int:
        """A tombstone: compaction forgets ``key``; readers drop it at once."""
        return self._send(key.encode(), None, timeout)


class ControlFollower:
    """A worker's reader of the control topic (no consumer group: it reads partition 0 from the
    beginning), plus the publisher for its claims. Thread-safe."""

    def __init__(
        self,
        conf: Mapping[str, Any],
        topic: str,
        *,
        on_admission: Callable[[float | None], None] | None = None,
    ) -> None:
        self.topic = topic
        self._conf = _plain(conf)
        self._on_admission = on_admission
        self._consumer = Consumer(
            {
                **self._conf,
                "group.id": f"{topic}.reader.{uuid.uuid4().hex[:8]}",  # never joins nor commits
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._publisher = ControlPublisher(conf, topic)
        self._admin: KafkaAdmin | None = None
        self._state = ControlState()
        self._cond = threading.Condition()
        self._next = 0  # the next offset to read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------------------
    def _poll(self, timeout: float) -> None:
        for msg in self._consumer.consume(100, timeout):
            err = msg.error()
            if err is not None:
                log.warning("control %s: %s", self.topic, err.str())
                continue
            with self._cond:
                changed = self._state.apply(msg.key(), msg.value())
                self._next = (msg.offset() or 0) + 1
                self._cond.notify_all()
                admission = self._state.admission
            if self._on_admission is not None and msg.key() == b"admission":
                self._on_admission(admission)
            if changed is not None:
                log.info("control %s@%d: %s", self.topic, self._next - 1, changed)

    def catch_up(self, timeout: float = 15.0) -> bool:
        """Read everything the topic holds now; False if that took longer than ``timeout``."""
        end = time.monotonic() + timeout
        high: int | None = None
        while high is None:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, 0), timeout=max(0.1, end - time.monotonic())
                )
            except Exception as exc:  # KafkaException: a topic just created may be unknown yet
                if time.monotonic() >= end:
                    log.warning("control %s: cannot read end offset: %s", self.topic, exc)
                    return False
                time.sleep(0.2)
        while self.position() < high and time.monotonic() < end:
            self._poll(0.2)
        return self.position() >= high

    def position(self) -> int:
        with self._cond:
            return self._next

    def wait_past(self, offset: int, timeout: float) -> bool:
        """Until the record at ``offset`` has been read (and applied)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._next > offset, timeout)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jizhi-control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll(0.2)
            except Exception:  # a follower that dies silently would freeze every hand-over
                log.exception("control %s: reader failed; retrying", self.topic)
                time.sleep(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._consumer.close()

    # -- views -----------------------------------------------------------------------------------
    @property
    def admission(self) -> float | None:
        with self._cond:
            return self._state.admission

    def plan(self, stage: str) -> AssignmentPlan | None:
        with self._cond:
            return self._state.plans.get(stage)

    def claims(self, stage: str) -> dict[str, Claim]:
        with self._cond:
            return dict(self._state.claims.get(stage, {}))

    # -- writing ---------------------------------------------------------------------------------
    def publish(self, record: ControlRecord, /) -> int:
        return self._publisher.publish(record)

    def delete(self, key: str, /) -> int:
        return self._publisher.delete(key)

    def group_empty(self, group: str, timeout: float = 5.0) -> bool:
        """No group-managed member in ``group`` (static members linger until their session
        times out). False when the broker cannot say."""
        try:
            if self._admin is None:
                self._admin = KafkaAdmin(self._conf)
            return not self._admin.group_members(group, timeout=timeout)
        except TransportError as exc:
            log.info("%s", exc)
            return False


class PlanControl:
    """One stage's view of the control topic, as the stage's `KafkaSource` uses it."""

    def __init__(
        self,
        follower: ControlFollower,
        *,
        stage: str,
        instance: str,
        group: str,
        group_check_s: float = 0.5,
    ) -> None:
        self.follower = follower
        self.stage = stage
        self.instance = instance
        self.group = group
        self._group_check_s = group_check_s
        self._checked_at = -1e9
        self._checked_generation = -1
        self._empty = False
        self.claimed: int | None = None
        """The generation of this worker's last claim published (not necessarily read back)."""

    def plan(self) -> AssignmentPlan | None:
        return self.follower.plan(self.stage)

    def step(self, plan: AssignmentPlan, held: set[int]) -> Step:
        claims = self.follower.claims(self.stage)
        mine = claims.get(self.instance)
        now = time.monotonic()
        wants = plan.share(self.instance) - held
        if plan.generation != self._checked_generation:
            self._checked_generation, self._empty = plan.generation, False
        if wants and not self._empty and now - self._checked_at >= self._group_check_s:
            self._checked_at = now
            self._empty = self.follower.group_empty(self.group)
        return handover(self.instance, plan, held, claims, my_claim=mine, group_empty=self._empty)

    def claim(self, plan: AssignmentPlan) -> None:
        """Publish this worker's claim for ``plan`` and wait until it is read back."""
        offset = self.follower.publish(
            Claim(self.stage, self.instance, plan.generation, sorted(plan.share(self.instance)))
        )
        self.claimed = plan.generation
        self.follower.wait_past(offset, 10.0)

    def leave(self) -> None:
        """This worker holds nothing any more (after its last commit): drop its claim."""
        if self.claimed is None and self.instance not in self.follower.claims(self.stage):
            return
        try:
            self.follower.delete(claim_key(self.stage, self.instance))
        except TransportError as exc:
            log.warning("%s: claim of %s not dropped: %s", self.stage, self.instance, exc)
