"""Sentry's Arroyo: a StreamProcessor with RunTask -> Produce -> CommitOffsets."""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload, KafkaProducer
from arroyo.backends.kafka.configuration import (
    build_kafka_configuration,
    build_kafka_consumer_configuration,
)
from arroyo.commit import ONCE_PER_SECOND
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import (
    CommitOffsets,
    ProcessingStrategy,
    ProcessingStrategyFactory,
    Produce,
    RunTask,
)
from arroyo.types import Commit, Message, Partition, Topic

from bench._peers.common import BytesTransform, parse_args


class _Factory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, producer: KafkaProducer, output: str) -> None:
        self._producer = producer
        self._output = Topic(output)
        self._transform = BytesTransform()

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        transform = self._transform

        def run(msg: Message[KafkaPayload]) -> KafkaPayload:
            p = msg.payload
            return KafkaPayload(p.key, transform(p.value), [])

        return RunTask(run, Produce(self._producer, self._output, CommitOffsets(commit)))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    consumer = KafkaConsumer(
        build_kafka_consumer_configuration(
            {},
            bootstrap_servers=[args.bootstrap],
            auto_offset_reset="earliest",
            group_id=args.group,
        )
    )
    producer = KafkaProducer(
        build_kafka_configuration(
            {"linger.ms": 2, "batch.size": 256 * 1024, "compression.type": "lz4"},
            bootstrap_servers=[args.bootstrap],
        )
    )
    processor: StreamProcessor[KafkaPayload] = StreamProcessor(
        consumer, Topic(args.input), _Factory(producer, args.output), ONCE_PER_SECOND
    )

    def on_signal(*_: Any) -> None:
        processor.signal_shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    processor.run()
    producer.close().result()
    return 0


if __name__ == "__main__":
    sys.exit(main())
