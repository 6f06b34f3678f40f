"""faust-streaming: an agent applying the same transform, one message at a time, sending each
result to the output topic (faust's own worker, aiokafka underneath)."""

from __future__ import annotations

import os
import sys

import faust

from bench._peers.common import BytesTransform

BOOTSTRAP = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092")
INPUT = os.environ.get("BENCH_INPUT", "bench.in")
OUTPUT = os.environ.get("BENCH_OUTPUT", "bench.out")
GROUP = os.environ.get("BENCH_GROUP", "bench-faust")
DATADIR = os.environ.get("BENCH_DATADIR", "/tmp/bench-faust")

app = faust.App(
    GROUP,
    broker=f"kafka://{BOOTSTRAP}",
    value_serializer="raw",
    key_serializer="raw",
    store="memory://",
    web_enabled=False,
    datadir=DATADIR,
    consumer_auto_offset_reset="earliest",
    topic_disable_leader=True,
)
source = app.topic(INPUT, key_type=bytes, value_type=bytes)
sink = app.topic(OUTPUT, key_type=bytes, value_type=bytes)
transform = BytesTransform()


@app.agent(source)
async def scale(stream: faust.StreamT[bytes]) -> None:
    async for key, value in stream.items():
        await sink.send(key=key, value=transform(value))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()
