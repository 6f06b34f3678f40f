"""A small Python client: publish requests, await their answers by request_id.

The client reads the responses topic from its current end (every partition, assigned by hand, no
consumer group, ``read_committed``), so it sees only answers to requests sent after it started and
never disturbs another client's reading. It can tail the dead-letter topic the same way.

A ``request_id`` is an idempotency key: ingest answers a repeat ``duplicate``. So that a caller who
re-sends after a timeout gets the answer rather than that status, the client remembers the answers
it read (bounded in count and age) and gives the first answer again for a ``duplicate``; when the
first answer is still on its way (this client sent the id before), it waits for it instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stages.codec import CodecError, DeadLetterCodec, ResponseCodec
from stages.events import DeadLetter, Request, Response
from stages.runtime.kafka import (
    REQUESTS_MAX_MESSAGE_BYTES,
    TransportError,
    consume_batch,
    topic_name,
)

log = logging.getLogger(__name__)


class Client:
    """Thread-safe. ``submit`` returns a Future resolved when the answer arrives.

    ``on_responses`` sees every answer read (batches, from the reader thread), ``on_dead`` every
    dead letter when given (then the dead-letter topic is tailed too).
    """

    def __init__(
        self,
        bootstrap: str,
        pipeline: str = "demo",
        *,
        conf: Mapping[str, Any] | None = None,
        on_responses: Callable[[list[Response]], None] | None = None,
        on_dead: Callable[[list[DeadLetter]], None] | None = None,
        topic_wait: float = 15.0,
        remember: int = 10_000,
        remember_s: float = 300.0,
    ) -> None:
        """``remember``/``remember_s``: how many answers, and for how long, are kept to answer
        a re-sent request_id with its first answer."""
        base: dict[str, Any] = {"bootstrap.servers": bootstrap, **(conf or {})}
        self.requests_topic = topic_name(pipeline, "requests")
        self.responses_topic = topic_name(pipeline, "responses")
        self.dead_topic = topic_name(pipeline, "dead")
        self._producer = Producer(
            {
                **base,
                "linger.ms": 2,
                "partitioner": "murmur2_random",
                "compression.type": "lz4",
                "message.max.bytes": REQUESTS_MAX_MESSAGE_BYTES,
            }
        )
        self._consumer = Consumer(
            {
                **base,
                "group.id": f"jizhi-client-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,
            }
        )
        self._pending: dict[str, Future[Response]] = {}
        self._resent: set[str] = set()
        self._answers: OrderedDict[str, tuple[float, Response]] = OrderedDict()
        self._remember = remember
        self._remember_s = remember_s
        self._lock = threading.Lock()
        self._codec = ResponseCodec()
        self._dead_codec = DeadLetterCodec()
        self._enc = msgspec.json.Encoder()
        self._on_responses = on_responses
        self._on_dead = on_dead
        self.unmatched = 0
        self.undecodable = 0
        self.delivery_errors = 0
        topics = [self.responses_topic] + ([self.dead_topic] if on_dead is not None else [])
        self._assign_from_end(topics, topic_wait)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="jizhi-client-read", daemon=True)
        self._reader.start()

    def _assign_from_end(self, topics: Iterable[str], wait: float) -> None:
        """Assign every partition at its high watermark, resolved now, so no answer produced
        after this returns can be missed."""
        parts: list[TopicPartition] = []
        for name in topics:
            end = time.monotonic() + wait
            while True:
                meta = self._consumer.list_topics(name, timeout=wait)
                topic = meta.topics.get(name)
                if topic is not None and topic.error is None and topic.partitions:
                    break
                if time.monotonic() >= end:
                    raise TransportError(
                        f"topic {name} does not exist: start a worker (or `jizhi publish`) first",
                        retriable=True,
                    )
                time.sleep(0.2)
            for pid in topic.partitions:
                parts.append(TopicPartition(name, pid, self._high(name, pid, end)))
        self._consumer.assign(parts)

    def _high(self, topic: str, partition: int, end: float) -> int:
        """The partition's high watermark; a just-created topic may still lack a leader."""
        while True:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=max(1.0, end - time.monotonic())
                )
                return int(high)
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() and err.code() != KafkaError.NOT_LEADER_FOR_PARTITION:
                    raise TransportError(
                        f"{topic}[{partition}]: cannot read the end offset: {err.str()}",
                        retriable=False,
                    ) from exc
                if time.monotonic() >= end:
                    raise TransportError(
                        f"{topic}[{partition}]: no end offset in time: {err.str()}",
                        retriable=True,
                    ) from exc
                time.sleep(0.2)

    def submit(self, request: Request | Mapping[str, Any] | bytes) -> Future[Response]:
        """Publish one request; the future resolves with its answer (never times out itself)."""
        if isinstance(request, bytes):
            payload = request
            try:
                head = msgspec.json.decode(request, type=dict[str, Any])
            except msgspec.DecodeError:
                head = {}
            rid = str(head.get("request_id", ""))
        elif isinstance(request, Request):
            payload, rid = self._enc.encode(request), request.request_id
        else:
            payload, rid = self._enc.encode(dict(request)), str(request.get("request_id", ""))
        with self._lock:
            fut = self._pending.get(rid)
            if fut is not None and not fut.done():
                self._resent.add(rid)  # both sends share the one answer the first will get
            else:
                fut = self._pending[rid] = Future()
        self.publish(payload, key=rid.encode())
        return fut

    def publish(self, payload: bytes, key: bytes | None = None) -> None:
        """Send raw bytes to the requests topic (no answer tracking)."""
        while True:
            try:
                self._producer.produce(
                    self.requests_topic, payload, key, on_delivery=self._delivered
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_errors += 1
            log.warning("request to %s not delivered: %s", msg.topic(), err.str())

    def request(self, request: Request | Mapping[str, Any], timeout: float = 10.0) -> Response:
        """Publish and wait; raises TimeoutError when no answer came in ``timeout`` seconds."""
        fut = self.submit(request)
        self.flush()
        return fut.result(timeout)

    def flush(self, timeout: float = 10.0) -> int:
        left: int = self._producer.flush(timeout)
        return left

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = consume_batch(self._consumer, 500, 0.05, 0.0)
            except KafkaException as exc:
                log.warning("client read: %s", exc.args[0].str())
                time.sleep(0.05)
                continue
            responses: list[Response] = []
            dead: list[DeadLetter] = []
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("client read %s: %s", msg.topic(), err.str())
                    continue
                if msg.topic() == self.dead_topic:
                    dead.append(_dead_letter(msg))
                    continue
                try:
                    responses.append(self._codec.decode(msg.value() or b""))
                except CodecError:
                    self.undecodable += 1
            if dead and self._on_dead is not None:
                self._on_dead(dead)
            if responses:
                self._resolve(responses)

    def _resolve(self, responses: Sequence[Response]) -> None:
        if self._on_responses is not None:
            self._on_responses(list(responses))
        now = time.monotonic()
        settled: list[tuple[Response, Future[Response] | None]] = []
        with self._lock:
            for r in responses:
                rid, answer = r.request_id, r
                if r.status == "duplicate":
                    first = self._recall(rid, now)
                    if first is None and rid in self._resent:
                        continue  # the first copy's answer is still coming
                    answer = first or r
                else:
                    self._keep(r, now)
                self._resent.discard(rid)
                settled.append((answer, self._pending.pop(rid, None)))
        for resp, fut in settled:
            if fut is None:
                self.unmatched += 1
            elif not fut.done():
                fut.set_result(resp)

    def _keep(self, r: Response, now: float) -> None:
        answers = self._answers
        answers[r.request_id] = (now, r)
        answers.move_to_end(r.request_id)
        while answers and (
            len(answers) > self._remember
            or next(iter(answers.values()))[0] < now - self._remember_s
        ):
            answers.popitem(last=False)

    def _recall(self, rid: str, now: float) -> Response | None:
        kept = self._answers.get(rid)
        return kept[1] if kept is not None and kept[0] >= now - self._remember_s else None

    def close(self) -> None:
        self._stop.set()
        self._reader.join(2.0)
        self._producer.flush(5.0)
        self._consumer.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dead_letter(msg: Message) -> DeadLetter:
    """A dead letter as the worker wrote it: the original payload, the reason in headers."""
    headers = dict(msg.headers() or [])

    def text(name: str) -> str:
        raw = headers.get(name)
        return raw.decode(errors="replace") if isinstance(raw, bytes) else ""

    return DeadLetter(
        stage=text("jizhi.stage"),
        reason=text("jizhi.reason"),
        payload=msg.value() or b"",
        request_id=text("jizhi.request_id"),
    )
