"""jizhi: a real `Stage` run by the runtime `jizhi worker` uses (KafkaSource -> Chain ->
KafkaSink on the worker's SharedProducer, at-least-once; or a TransactionalChain)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import msgspec

from bench._peers.common import SCALE, STAMP, parse_args
from stages.codec import EventCodec
from stages.events import DeadLetter, Event
from stages.runtime import BatchPolicy, Chain, runner
from stages.runtime.kafka import (
    ChainOutputs,
    KafkaSink,
    KafkaSource,
    Output,
    SharedProducer,
    TransactionalChain,
    ensure_topics,
)
from stages.stage import BaseStage

PIPELINE = "bench"


class ScaleStage(BaseStage):
    """Scores x 1.5; the runner adds the stage's stamp."""

    name = STAMP

    def process(self, batch: Sequence[Event], /) -> Sequence[Event | DeadLetter]:
        out = []
        for ev in batch:
            assert ev.scores is not None
            out.append(msgspec.structs.replace(ev, scores=ev.scores * SCALE))
        return out


class _Encode:
    def __init__(self) -> None:
        self._codec = EventCodec()

    def event(self, ev: Event) -> tuple[bytes | None, bytes, None]:
        return str(ev.user_id).encode(), self._codec.encode(ev), None

    def other(self, value: Any) -> tuple[bytes | None, bytes, None]:
        return None, repr(value).encode(), None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.depth_every_batch:
        runner.DEPTH_SAMPLE_S = 0.0
    conf: dict[str, Any] = {"bootstrap.servers": args.bootstrap, "client.id": "bench-jizhi"}
    side = [f"{args.output}.answers", f"{args.output}.dead"]
    ensure_topics(conf, side, partitions=1, replication=1)
    enc = _Encode()
    codec = EventCodec()
    policy = BatchPolicy(max_size=args.batch_size, max_wait_ms=2.0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer_conf = {**conf, "group.id": args.group}
    if args.exactly_once:
        txn = TransactionalChain(
            lambda: [ScaleStage()],
            args.input,
            consumer_conf=consumer_conf,
            producer_conf={**conf, "transactional.id": f"{args.group}.txn"},
            outputs=ChainOutputs(
                forward=Output(args.output, enc.event),
                answers=Output(side[0], enc.other),
                dead=Output(side[1], enc.other),
            ),
            pipeline=PIPELINE,
            stage=STAMP,
            policy=policy,
            decode_first=codec.decode,
        )
        txn.start()
        while not stop.wait(0.1) and txn.error is None:
            pass
        txn.close()
        txn.join(30.0)
        return 1 if txn.error is not None else 0
    producer = SharedProducer(conf, pipeline=PIPELINE)
    source = KafkaSource(consumer_conf, args.input, pipeline=PIPELINE, stage=STAMP)
    chain = Chain(
        [ScaleStage()],
        source,
        forward=KafkaSink(producer, args.output, enc.event),
        answers=KafkaSink(producer, side[0], enc.other),
        dead=KafkaSink(producer, side[1], enc.other),
        pipeline=PIPELINE,
        policies={STAMP: policy},
        decode_first=codec.decode,
    )
    chain.start()
    while not stop.wait(0.1) and chain.error is None:
        pass
    source.close()
    chain.join(30.0)
    producer.flush(30.0)
    source.finish(30.0)
    producer.close(1.0)
    return 1 if chain.error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
