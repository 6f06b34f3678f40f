"""The plain confluent-kafka loop: batch consume, msgspec decode, transform, encode, produce with
linger, store offsets once their outputs are acknowledged, commit in the background."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench._peers.common import parse_args, scale
from stages.codec import EventCodec


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "batch.size": 256 * 1024,
            "compression.type": "lz4",
        }
    )
    consumer.subscribe([args.input])
    codec = EventCodec()
    out = args.output
    pending: dict[int, int] = {}  # partition -> next offset, waiting for acknowledgement
    pending_since = 0.0
    while not stop.is_set():
        msgs = consumer.consume(500, 0.05)
        now_ms = time.time() * 1000.0
        for msg in msgs:
            value, partition, offset = msg.value(), msg.partition(), msg.offset()
            if msg.error() is not None or value is None or partition is None or offset is None:
                continue
            ev = scale(codec.decode(value), now_ms)
            while True:
                try:
                    producer.produce(out, codec.encode(ev), msg.key())
                    break
                except BufferError:
                    producer.poll(0.05)
            if not pending:
                pending_since = time.monotonic()
            pending[partition] = offset + 1
        producer.poll(0)
        # At-least-once without a callback per message: offsets are stored once every record
        # produced so far is acknowledged (or after a flush, if that has not happened for 1 s).
        if pending and (len(producer) == 0 or time.monotonic() - pending_since > 1.0):
            if len(producer):
                producer.flush()
            _store(consumer, args.input, pending)
    producer.flush()
    _store(consumer, args.input, pending)
    consumer.close()
    return 0


def _store(consumer: Any, topic: str, pending: dict[int, int]) -> None:
    if pending:
        consumer.store_offsets(offsets=[TopicPartition(topic, p, o) for p, o in pending.items()])
        pending.clear()


if __name__ == "__main__":
    sys.exit(main())
