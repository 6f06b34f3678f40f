"""A consumer process for the allocator's wave test: an I/O-bound stage over the real runtime.

The stage "calls a remote service" per event: it sleeps ``--batch-ms + --event-ms x n`` for a
batch of ``n`` (at most ``--max-batch``), releasing the GIL, so one consumer's rate is bounded
(about 1000 / event-ms events/s) whatever the cores, and more consumers help without needing
more of them. Everything else is jizhi's own Kafka runtime: a `KafkaSource` in the consumer group
``jizhi.<pipeline>.<stage>`` (at-least-once: an input offset is committed only after its output
is acknowledged), a one-stage `Chain`, a `KafkaSink` to ``--out`` carrying each input's id, and
the stage metrics (``jizhi_stage_batch_size``, ``jizhi_stage_processing_seconds``) on
``--metrics-port`` for the allocator's scrape. SIGTERM drains like `jizhi worker`: stop
fetching, finish in-flight batches, flush, commit, leave the group.

    python -m tests.integration._sleepy_worker --bootstrap HOST:PORT --pipeline P --stage S \\
        --out TOPIC --metrics-port N [--instance NAME]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jizhi.metrics_server import serve_metrics
from stages.events import Event
from stages.runtime import BatchPolicy, Chain
from stages.runtime.kafka import (
    ControlFollower,
    KafkaSink,
    KafkaSource,
    PlanControl,
    SharedProducer,
    ensure_control_topic,
    group_id,
    topic_name,
)
from stages.stage import BaseStage, Result

_EMPTY = np.empty(0, dtype=np.int64)


class SleepyStage(BaseStage):
    """Each input (an id as bytes) becomes an event carrying that id, after a sleep."""

    def __init__(self, name: str, *, batch_s: float, event_s: float) -> None:
        self.name = name
        self._batch_s = batch_s
        self._event_s = event_s

    def process(self, batch: Sequence[bytes], /) -> Sequence[Result]:
        time.sleep(self._batch_s + self._event_s * len(batch))
        now_ms = time.time() * 1000.0
        out: list[Result] = []
        for raw in batch:
            rid = raw.decode("ascii", "replace")
            out.append(
                Event(
                    v=1,
                    request_id=rid,
                    user_id=0,
                    deadline_ms=now_ms + 60_000.0,
                    created_at_ms=now_ms,
                    k=1,
                    priority=0,
                    candidates=_EMPTY,
                    exclude=_EMPTY,
                    context={},
                )
            )
        return out


def _encode_id(ev: Event) -> tuple[bytes | None, bytes, None]:
    rid = ev.request_id.encode()
    return rid, rid, None


def _encode_none(value: Any) -> tuple[bytes | None, bytes, None]:
    return None, b"", None  # answers and dead letters: the sleepy stage makes none


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--pipeline", required=True)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--out", required=True, help="topic the ids are forwarded to")
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--instance", default=None, help="group.instance.id (static membership)")
    ap.add_argument(
        "--follow-plans",
        action="store_true",
        help="follow assignment plans on the control topic as `jizhi worker` does (needs "
        "--instance: the name plans use)",
    )
    ap.add_argument("--batch-ms", type=float, default=1.0)
    ap.add_argument("--event-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    p, stage = args.pipeline, args.stage
    conf: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap,
        "client.id": f"sleepy-{os.getpid()}",
    }
    consumer_conf: dict[str, Any] = {
        **conf,
        "group.id": group_id(p, stage),
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    if args.instance:
        consumer_conf["group.instance.id"] = args.instance
    serve_metrics(args.metrics_port)
    producer = SharedProducer(conf, pipeline=p)
    control = None
    if args.follow_plans:
        if not args.instance:
            ap.error("--follow-plans needs --instance")
        follower = ControlFollower(conf, ensure_control_topic(conf, p, replication=1))
        follower.catch_up()
        control = PlanControl(
            follower, stage=stage, instance=args.instance, group=group_id(p, stage)
        )
    source = KafkaSource(
        consumer_conf, topic_name(p, stage), pipeline=p, stage=stage, control=control
    )
    chain = Chain(
        [SleepyStage(stage, batch_s=args.batch_ms / 1000.0, event_s=args.event_ms / 1000.0)],
        source,
        forward=KafkaSink(producer, args.out, _encode_id),
        answers=KafkaSink(producer, topic_name(p, "responses"), _encode_none),
        dead=KafkaSink(producer, topic_name(p, "dead"), _encode_none),
        pipeline=p,
        policies={stage: BatchPolicy(max_size=args.max_batch, max_wait_ms=5.0)},
        first_takes_events=False,
        threads="one",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if control is not None:
        control.follower.start()  # follow the control topic in the background, as jizhi worker
    chain.start()
    print(f"sleepy {os.getpid()}: running {stage}", flush=True)
    while not stop.wait(0.1):
        if chain.error is not None or chain.join(0):
            break
    # Drain exactly as `jizhi worker` does: stop fetching, finish, flush, commit, leave.
    t0 = time.monotonic()
    source.close()
    drained = chain.join(20.0)
    left = producer.flush(20.0)
    source.finish(10.0)  # a plan follower also deletes its claim here
    producer.close(1.0)
    if control is not None:
        control.follower.close()
    clean = drained and not left and chain.error is None
    print(
        f"sleepy {os.getpid()}: stopped {'cleanly' if clean else 'with leftovers'} "
        f"in {time.monotonic() - t0:.2f} s ({chain.runners[0].processed} events processed)",
        flush=True,
    )
    return 0 if clean else 3


if __name__ == "__main__":
    sys.exit(main())
