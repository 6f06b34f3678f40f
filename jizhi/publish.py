"""`jizhi publish`: a load generator for a pipeline running in `jizhi worker` processes.

It publishes the same JSON requests as `jizhi demo` (same `Workload`, same `RequestEncoder`, same
open-loop schedule: a request's clock starts at its scheduled send time), reads the answers from
the responses topic, and prints the demo's summary table. Request ids carry a per-run prefix so
repeated runs against one pipeline are not taken for duplicates by ingest.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
import numpy as np

from jizhi.client import Client
from jizhi.config import load_settings
from jizhi.synth import RequestEncoder, Workload, WorldSpec, publish_chunk
from jizhi.tally import Tally
from jizhi.world_args import add_world_args, world_spec
from stages.errors import JizhiError
from stages.events import DeadLetter, Response
from stages.runtime.kafka import ensure_pipeline_topics
from stages.runtime.kafka.reach import require_broker


@dataclass(frozen=True, slots=True)
class PublishOptions:
    bootstrap: str
    pipeline: str = "demo"
    world: WorldSpec = field(default_factory=WorldSpec)
    workload: Workload = field(default_factory=lambda: Workload(requests=10_000))
    rate: float = 1_000.0
    answer_timeout_s: float = 30.0
    id_prefix: str = ""
    partitions: int = 6
    replication: int = 1
    conf: dict[str, Any] = field(default_factory=dict)
    """librdkafka settings besides the bootstrap (security, from ``[kafka]`` of a config)."""
    connect_timeout_s: float = 10.0
    progress: bool = True
    keep_responses: bool = False
    warmup: int = 200
    """Requests sent (and answered) before the clock starts: proves every stage has a worker and
    warms the workers' caches, so the figures measure a serving pipeline, not its start-up."""
    ready_timeout_s: float = 120.0
    warmup_s: float = 15.0
    """Then this long at the target rate, uncounted: a broker just started spends its first
    seconds compiling (measured: p50 206 ms in the first 10 s run at 500 req/s, 23 ms in the
    third), and the workers' caches fill."""


class NotReadyError(JizhiError):
    """The pipeline did not answer the warm-up requests: some stage has no running worker."""


@dataclass
class PublishResult:
    summary: dict[str, Any]
    tally: Tally
    published: int
    prefix: str
    dead_letters: list[DeadLetter] = field(default_factory=list)


def _warm_up(client: Client, opts: PublishOptions, prefix: str, out: TextIO) -> None:
    """Send ``opts.warmup`` requests of another seed and wait for every answer (any status)."""
    if opts.warmup <= 0:
        return
    warm = Workload(
        requests=opts.warmup,
        candidates=opts.workload.candidates,
        k=opts.workload.k,
        timeout_ms=max(opts.workload.timeout_ms, 10_000.0),
        zipf=opts.workload.zipf,
        seed=opts.workload.seed + 1,
    )
    enc = RequestEncoder(warm)
    t0 = time.monotonic()
    futures = [
        client.submit(enc.encode(f"warmup-{prefix}-{rid}", user, cands, None))
        for b in warm.batches(opts.world, chunk=64)
        for rid, user, cands in zip(b.ids, b.users.tolist(), b.candidates.tolist(), strict=True)
    ]
    client.flush(30.0)
    done, pending = wait(futures, timeout=opts.ready_timeout_s)
    if pending:
        raise NotReadyError(
            f"pipeline {opts.pipeline!r}: {len(pending)} of {len(futures)} warm-up requests "
            f"unanswered after {opts.ready_timeout_s:.0f} s; is a `jizhi worker` running for every "
            "stage (ingest, features, embed, score, rank) with the same --pipeline and world?"
        )
    if opts.progress:
        print(
            f"pipeline ready: {len(done)} warm-up requests answered in "
            f"{time.monotonic() - t0:.1f} s",
            file=out,
        )
    if opts.warmup_s <= 0:
        return
    rate = opts.rate if opts.rate > 0 else 1_000.0
    steady = Workload(
        requests=max(1, int(rate * opts.warmup_s)),
        candidates=opts.workload.candidates,
        k=opts.workload.k,
        timeout_ms=opts.workload.timeout_ms,
        zipf=opts.workload.zipf,
        seed=opts.workload.seed + 2,
    )
    enc = RequestEncoder(steady)
    start, sent = time.monotonic(), 0
    for b in steady.batches(opts.world, chunk=publish_chunk(rate)):
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for rid, user, cands in zip(b.ids, b.users.tolist(), b.candidates.tolist(), strict=True):
            client.publish(enc.encode(f"warmup-{prefix}-s{rid}", user, cands, None))
        sent += len(b.ids)
    client.flush(30.0)
    time.sleep(min(2.0, opts.warmup_s))  # let the warm-up traffic drain before the clock starts
    if opts.progress:
        print(f"warmed up: {sent} requests at {rate:.0f} req/s, not counted", file=out)


def run_publish(opts: PublishOptions, out: TextIO = sys.stderr) -> PublishResult:
    prefix = opts.id_prefix or uuid.uuid4().hex[:8]
    conf = {"bootstrap.servers": opts.bootstrap, **opts.conf}
    require_broker(conf, timeout_s=opts.connect_timeout_s)
    ensure_pipeline_topics(
        conf, opts.pipeline, partitions=opts.partitions, replication=opts.replication
    )
    tally = Tally()
    tally.keep_responses = opts.keep_responses
    mine = prefix + "-"
    dead: list[DeadLetter] = []
    lock = threading.Lock()

    seen_ms: list[float] = []

    def on_responses(batch: list[Response]) -> None:
        now_ms = time.time() * 1000.0
        ours = [r for r in batch if r.request_id.startswith(mine)]
        tally.add(ours)
        with lock:
            seen_ms.extend(now_ms - r.created_at_ms for r in ours)

    def on_dead(batch: list[DeadLetter]) -> None:
        tally.add_dead(batch)
        with lock:
            dead.extend(batch)

    client = Client(
        opts.bootstrap, opts.pipeline, conf=opts.conf, on_responses=on_responses, on_dead=on_dead
    )
    enc = RequestEncoder(opts.workload)
    try:
        _warm_up(client, opts, prefix, out)
    except BaseException:
        client.close()
        raise
    rate = opts.rate
    total = opts.workload.requests
    published = 0
    tty = out.isatty()
    next_print = 0.0
    start_wall = time.time()
    start = time.monotonic()
    sent_s = 0.0
    try:
        for batch in opts.workload.batches(opts.world, chunk=publish_chunk(rate)):
            if rate > 0:
                delay = start + published / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent_ms = (start_wall + published / rate) * 1000.0
            else:
                sent_ms = time.time() * 1000.0
            for rid, user, cands in zip(
                batch.ids, batch.users.tolist(), batch.candidates.tolist(), strict=True
            ):
                client.publish(enc.encode(mine + rid, user, cands, sent_ms), str(user).encode())
            published += len(batch.ids)
            now = time.monotonic()
            if opts.progress and now >= next_print:
                _progress(out, tally, sent=published, total=total, elapsed=now - start, tty=tty)
                next_print = now + (0.25 if tty else 5.0)
        client.flush(30.0)
        sent_s = time.monotonic() - start
        end = time.monotonic() + opts.answer_timeout_s
        while tally.answered < published and time.monotonic() < end:
            time.sleep(0.02)
            now = time.monotonic()
            if opts.progress and now >= next_print:
                _progress(out, tally, sent=published, total=total, elapsed=now - start, tty=tty)
                next_print = now + (0.25 if tty else 5.0)
        time.sleep(0.2)  # late duplicates, if any, are counted too
    finally:
        client.close()
    elapsed = ((tally.last_answer or time.monotonic()) - start) if tally.answered else sent_s
    if opts.progress:
        _progress(out, tally, sent=published, total=total, elapsed=elapsed, tty=tty)
        if tty:
            print(file=out)
    summary = tally.summary(
        published,
        elapsed,
        rate_target_rps=rate,
        publish_rps=round(published / sent_s, 1) if sent_s > 0 else 0.0,
        candidates=opts.workload.candidates,
        pipeline=opts.pipeline,
        id_prefix=prefix,
        unmatched_responses=client.unmatched,
        delivery_errors=client.delivery_errors,
        answer_timeout_hit=tally.answered < published,
        client_latency_ms=_percentiles(seen_ms),
    )
    return PublishResult(
        summary=summary, tally=tally, published=published, prefix=prefix, dead_letters=dead
    )


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """Latency as the client sees it: from the request's creation until its answer was read
    (includes the responses topic and, with exactly-once, the transaction commit)."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(values)
    return {
        k: round(float(np.percentile(a, q)), 3) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))
    }


def _progress(
    out: TextIO, tally: Tally, *, sent: int, total: int, elapsed: float, tty: bool
) -> None:
    done = tally.answered
    rate = done / elapsed if elapsed > 0 else 0.0
    line = (
        f"sent {sent:>8,}/{total:,}  answered {done:>8,}  {rate:>8,.0f} req/s  "
        f"p99 {tally.recent_p99():6.1f} ms  dead {tally.dead_lettered}"
    )
    print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)


def _run(args: argparse.Namespace) -> int:
    from jizhi.demo import format_summary, write_summary  # noqa: PLC0415 - CLI path only

    spec = world_spec(args, context_dim=16)
    kafka = msgspec.structs.replace(load_settings(args.config).kafka, bootstrap=args.bootstrap)
    conf = kafka.client_conf()
    del conf["bootstrap.servers"]
    workload = Workload(
        requests=args.requests,
        candidates=args.candidates,
        k=args.k,
        timeout_ms=args.timeout_ms,
        zipf=args.zipf,
        seed=args.seed,
    )
    result = run_publish(
        PublishOptions(
            bootstrap=args.bootstrap,
            pipeline=args.pipeline,
            world=spec,
            workload=workload,
            rate=args.rate,
            answer_timeout_s=args.answer_timeout,
            id_prefix=args.id_prefix,
            partitions=args.partitions,
            replication=args.replication,
            conf=conf,
            connect_timeout_s=kafka.connect_timeout_s,
            progress=not args.no_progress,
            warmup=args.warmup,
            warmup_s=args.warmup_s,
            ready_timeout_s=args.ready_timeout,
        )
    )
    print(format_summary(result.summary))  # no cache row: that ratio is in the workers
    s = result.summary
    cl = s["client_latency_ms"]
    sys.stdout.flush()
    print(
        f"duplicates {s['duplicates']:,}  unanswered {s['unanswered']:,}  "
        f"client-side latency p50 {cl['p50']} ms p99 {cl['p99']} ms",
        file=sys.stderr,
    )
    if args.summary_json:
        write_summary(s, args.summary_json)
        print(f"summary written to {args.summary_json}", file=sys.stderr)
    if s["unanswered"]:
        print(f"error: {s['unanswered']:,} requests unanswered", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "publish",
        help="publish synthetic requests to a running pipeline and report its answers",
        description="A load generator for `jizhi worker` processes: the demo's requests over "
        "Kafka, open loop at a fixed rate, then the demo's summary table.",
    )
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers HOST:PORT")
    p.add_argument("--pipeline", default="demo", help="pipeline name (topics jizhi.<name>.*)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML settings; only [kafka] is read (security, connect_timeout_s)",
    )
    p.add_argument("--requests", type=int, default=10_000, help="requests to publish (10000)")
    p.add_argument(
        "--rate", type=float, default=1_000.0, help="requests/s; 0 = as fast as possible"
    )
    p.add_argument("--candidates", type=int, default=200, help="candidates per request (200)")
    p.add_argument("--k", type=int, default=10, help="items per answer (10)")
    p.add_argument("--zipf", type=float, default=1.1, help="power-law exponent of items (1.1)")
    p.add_argument("--timeout-ms", type=float, default=200.0, help="deadline budget (200)")
    p.add_argument(
        "--answer-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for answers after the last send (30)",
    )
    p.add_argument("--id-prefix", default="", help="request id prefix (random per run)")
    p.add_argument("--partitions", type=int, default=6, help="partitions of topics it creates (6)")
    p.add_argument(
        "--replication", type=int, default=1, help="replication of topics it creates (1)"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="requests answered before the clock starts; 0 = none (200)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=15.0,
        help="then seconds of uncounted traffic at --rate, for a freshly started broker (15)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the warm-up answers (120)",
    )
    p.add_argument("--summary-json", type=Path, default=None, help="also write the summary here")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    add_world_args(p, world_dir=False)
    p.set_defaults(func=_run)
