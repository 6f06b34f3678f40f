"""`jizhi demo`: the whole pipeline in one process on the embedded defaults.

A publisher thread plays the client: it sends JSON requests into the ingest queue at a fixed rate
(open loop: a request's clock starts at its scheduled send time, so queueing behind a slow pipeline
counts against its latency and deadline) or as fast as backpressure allows (``rate = 0``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from jizhi.assemble import batch_policies, cache_hit_ratio, open_store, stage_context
from jizhi.config import Settings, pipeline_of
from jizhi.synth import (
    RequestEncoder,
    Workload,
    World,
    WorldSpec,
    ensure_world,
    publish_chunk,
    warm_up,
)
from jizhi.tally import Tally
from stages.model import RankingModel
from stages.runtime import BoundedQueue, CallbackSink, Chain, Envelope
from stages.runtime.channel import ClosedError


@dataclass(frozen=True, slots=True)
class DemoOptions:
    world: WorldSpec = field(default_factory=WorldSpec)
    workload: Workload = field(default_factory=lambda: Workload(requests=20_000))
    rate: float = 2_000.0
    settings: Settings = field(default_factory=Settings)
    world_root: Path | None = None
    progress: bool = True
    keep_responses: bool = False
    drain_timeout_s: float = 30.0
    warm_up: bool = True
    pregenerate: bool = False
    """Encode every request before the clock starts (only with ``rate = 0``): measures the
    pipeline alone, as if the client were another process."""


@dataclass
class DemoResult:
    summary: dict[str, Any]
    tally: Tally
    world: World
    published: int
    error: BaseException | None = None


class _Publisher(threading.Thread):
    def __init__(self, opts: DemoOptions, world: World, queue: BoundedQueue) -> None:
        super().__init__(name="demo-publisher", daemon=True)
        self._opts = opts
        self._world = world
        self._queue = queue
        self.published = 0
        self.error: BaseException | None = None
        self.started_at = time.monotonic()

    def run(self) -> None:
        if self._opts.pregenerate and self._opts.rate <= 0:
            self._run_pregenerated()
            return
        enc = RequestEncoder(self._opts.workload)
        rate = self._opts.rate
        start_wall = time.time()
        self.started_at = start = time.monotonic()
        try:
            chunk = publish_chunk(rate)
            for batch in self._opts.workload.batches(self._world.spec, chunk=chunk):
                if rate > 0:
                    due = start + self.published / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    sent_ms = (start_wall + (self.published / rate)) * 1000.0
                else:
                    sent_ms = time.time() * 1000.0
                users = batch.users.tolist()
                cands = batch.candidates.tolist()
                payloads = [
                    Envelope(enc.encode(rid, u, c, sent_ms))
                    for rid, u, c in zip(batch.ids, users, cands, strict=True)
                ]
                self._queue.put_many(payloads)
                self.published += len(payloads)
        except ClosedError as exc:
            self.error = exc
        finally:
            self._queue.close()

    def _run_pregenerated(self) -> None:
        enc = RequestEncoder(self._opts.workload)
        chunks = [
            [
                Envelope(enc.encode(rid, u, c, None))
                for rid, u, c in zip(b.ids, b.users.tolist(), b.candidates.tolist(), strict=True)
            ]
            for b in self._opts.workload.batches(self._world.spec, chunk=publish_chunk(0))
        ]
        self.started_at = time.monotonic()
        try:
            for payloads in chunks:
                self._queue.put_many(payloads)
                self.published += len(payloads)
        except ClosedError as exc:
            self.error = exc
        finally:
            self._queue.close()


def run_demo(opts: DemoOptions, out: TextIO = sys.stderr) -> DemoResult:
    t0 = time.monotonic()
    world = ensure_world(opts.world, opts.world_root)
    if opts.progress:
        print(f"world ready in {time.monotonic() - t0:.1f}s at {world.root}", file=out)
    settings = opts.settings
    service = settings.service()
    pipeline = pipeline_of(service)
    store = open_store(settings, world.store_path)
    model_path = settings.model_path(service)
    model = RankingModel.load(Path(model_path) if model_path else world.model_path)
    if opts.warm_up:
        warm_up(store, world.spec, opts.workload)
    tally = Tally()
    tally.keep_responses = opts.keep_responses
    context = stage_context(settings, service, store=lambda: store, model=lambda: model)
    source = BoundedQueue(service.queue_capacity)
    chain = Chain(
        pipeline.build(pipeline.names, context),
        source,
        forward=None,
        answers=CallbackSink(tally.add),
        dead=CallbackSink(tally.add_dead),
        pipeline=pipeline.name,
        policies=batch_policies(service),
        queue_capacity=service.queue_capacity,
        first_takes_events=False,
        threads=service.threads,
    )
    publisher = _Publisher(opts, world, source)
    chain.start()
    publisher.start()
    total = opts.workload.requests
    next_print = 0.0
    tty = out.isatty()
    try:
        # The publisher closes the ingest queue when done; the chain then drains and stops.
        while not chain.join(timeout=0.05):
            now = time.monotonic()
            if opts.progress and now >= next_print:
                _progress(out, tally, total, now - publisher.started_at, tty)
                next_print = now + (0.25 if tty else 5.0)
    finally:
        source.close()
        drained = chain.join(timeout=opts.drain_timeout_s)
        store.close()
    elapsed = (tally.last_answer or time.monotonic()) - publisher.started_at
    if opts.progress:
        _progress(out, tally, total, elapsed, tty)
        if tty:
            print(file=out)
    summary = tally.summary(
        publisher.published,
        elapsed,
        cache_hit_ratio=round(
            cache_hit_ratio(store, (settings.store.user_table, settings.store.item_table)), 4
        ),
        drained=drained,
        rate_target_rps=opts.rate,
        candidates=opts.workload.candidates,
        batch_size=service.batch_size,
    )
    return DemoResult(
        summary=summary,
        tally=tally,
        world=world,
        published=publisher.published,
        error=chain.error or publisher.error,
    )


def _progress(out: TextIO, tally: Tally, total: int, elapsed: float, tty: bool) -> None:
    done = tally.answered
    rate = done / elapsed if elapsed > 0 else 0.0
    line = (
        f"answered {done:>8,}/{total:,}  {rate:>8,.0f} req/s  "
        f"p99 {tally.recent_p99():6.1f} ms  dead {tally.dead_lettered}"
    )
    print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table."""
    lat = summary["latency_ms"]
    rows = [
        ("requests", f"{summary['requests']:,}"),
        ("answered", f"{summary['answered']:,}"),
        ("  ok", f"{summary['ok']:,}"),
        ("  expired", f"{summary['expired']:,}"),
        ("  shed", f"{summary['shed']:,}"),
        ("  invalid", f"{summary['invalid']:,}"),
        ("  duplicate", f"{summary.get('duplicate', 0):,}"),
        ("degraded", f"{summary.get('degraded', 0):,}"),
        ("dead-lettered", f"{summary['dead_lettered']:,}"),
        ("throughput", f"{summary['throughput_rps']:,.0f} req/s"),
        ("latency p50", _ms(lat.get("p50"))),
        ("latency p95", _ms(lat.get("p95"))),
        ("latency p99", _ms(lat.get("p99"))),
    ]
    if "cache_hit_ratio" in summary:
        rows.append(("cache hit ratio", f"{summary['cache_hit_ratio']:.1%}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>16}" for k, v in rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
