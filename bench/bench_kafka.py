"""Stages as Kafka consumer groups on a real broker, side by side with their peers, in one run.

    python -m bench.bench_kafka [--messages 50000] [--rounds 3] [--requests 10000]
                                [--bootstrap HOST:PORT] [--only pass,e2e]

1. A pass-through stage (consume, decode a msgpack jizhi event with 200 candidates and 200 scores,
   scores x 1.5 and a stamp, encode, produce, commit) in jizhi (a real Stage on the worker's
   runtime), the plain confluent-kafka loop, Quix Streams, faust-streaming and Sentry's Arroyo,
   each in its own process, each from the same pre-filled input topic to its own output topic
   (LogAppendTime), timed from the first to the last output record; plus jizhi with exactly-once.
2. The end-to-end demo workload: `jizhi worker` processes (one with all five stages; the split
   deployment of the README) fed by `jizhi publish`, against the embedded mode (`run_demo`) on the
   same world: saturated throughput, and p50/p99 at a paced rate; at-least-once and exactly-once.

Everything runs in rounds, interleaved (A, B, C, ..., A, B, C, ...); the tables show medians.
Without ``--bootstrap`` the local broker is started (or reused) with `jizhi local up`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from bench._peers.common import make_events
from jizhi.config import PipelineSettings, Settings, pipeline_of
from jizhi.demo import DemoOptions, run_demo
from jizhi.publish import PublishOptions, run_publish
from jizhi.synth import Workload, WorldSpec, ensure_world
from stages.codec import EventCodec
from stages.runtime.kafka import KafkaAdmin, TransportError, ensure_pipeline_topics, ensure_topics

REPO = Path(__file__).resolve().parent.parent
QUIX_VENV = Path.home() / ".cache" / "jizhi" / "bench" / "quix-venv"
PARTITIONS = 6
PEERS = ("jizhi", "plain", "quix", "faust", "arroyo", "jizhi-eos", "jizhi-before")
"""``jizhi-before``: jizhi with the runner sampling its source's depth on every batch, as it did
before this benchmark's fix (a scan of every unfinished offset per batch)."""
SPLIT = ("ingest,features", "embed,score", "rank")  # the README's three workers
ALL = ("ingest,features,embed,score,rank",)


# -- the broker ---------------------------------------------------------------------------------


def broker(bootstrap: str | None) -> str:
    if bootstrap:
        return bootstrap
    from jizhi import local  # noqa: PLC0415 - only when no broker is given

    st = local.up()
    assert st.bootstrap is not None
    return st.bootstrap


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    if not topics:
        return
    try:  # a topic never created is fine; anything else is reported, not fatal to the run
        KafkaAdmin({"bootstrap.servers": bootstrap}).delete_topics(topics)
    except TransportError as exc:
        print(f"  (delete: {exc})", file=sys.stderr)


def topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    admin = KafkaAdmin({"bootstrap.servers": bootstrap}, timeout=10)
    return [t for t in admin.partition_counts() if t.startswith(prefix)]


def watermark_total(consumer: Consumer, topic: str) -> int:
    """Records (and transaction markers) in ``topic``; 0 while its partitions have no leader yet
    (just created)."""
    total = 0
    for p in range(PARTITIONS):
        try:
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=10, cached=False
            )
        except KafkaException:
            return 0
        total += hi - lo
    return int(total)


# -- the input ----------------------------------------------------------------------------------


def prefill(bootstrap: str, n: int, candidates: int) -> tuple[str, int]:
    """The input topic with ``n`` events (reused when it already holds exactly them); returns its
    name and the size of one message."""
    topic = f"bench.kafka.in.n{n}.c{candidates}.plain"
    conf = {"bootstrap.servers": bootstrap}
    events = make_events(n, candidates=candidates)
    codec = EventCodec()
    size = len(codec.encode(events[0]))
    probe = Consumer({**conf, "group.id": "bench-probe"})
    try:
        existing = topic in probe.list_topics(timeout=10).topics
        if existing and watermark_total(probe, topic) == n:
            return topic, size
    finally:
        probe.close()
    if existing:
        delete_topics(bootstrap, [topic])
        time.sleep(2.0)
    ensure_topics(conf, [topic], partitions=PARTITIONS, replication=1)
    producer = Producer({**conf, "linger.ms": 20})  # uncompressed: aiokafka lacks lz4
    for ev in events:
        while True:
            try:
                producer.produce(topic, codec.encode(ev), str(ev.user_id).encode())
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)
    return topic, size


# -- one pass-through run -----------------------------------------------------------------------


@dataclass
class Outcome:
    rate: float  # events/s, first to last output record
    count: int
    span_s: float
    wall_s: float  # from process start until every output was there (startup included)
    cpu_us: float  # the process's CPU per event, from its first output to its last


QUIX_REQUIREMENTS = ("quixstreams>=3,<4", "msgspec", "numpy")


def ensure_quix_venv() -> Path:
    """Quix Streams pins older confluent-kafka and pydantic than jizhi uses, so it gets a
    virtualenv of its own (made once); its peer reaches the repo's codec through PYTHONPATH."""
    python = QUIX_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *QUIX_REQUIREMENTS], check=True)
    return python


def _peer_cmd(peer: str, args: list[str], env: dict[str, str]) -> list[str]:
    py = sys.executable
    if peer == "quix":
        ensure_quix_venv()
        return [str(QUIX_VENV / "bin" / "python"), "-m", "bench._peers.quix_peer", *args]
    if peer == "faust":
        return [py, "-m", "bench._peers.faust_peer"]
    if peer == "jizhi-eos":
        return [py, "-m", "bench._peers.jizhi_peer", *args, "--exactly-once"]
    if peer == "jizhi-before":
        return [py, "-m", "bench._peers.jizhi_peer", *args, "--depth-every-batch"]
    return [py, "-m", f"bench._peers.{peer}_peer", *args]


def read_output(bootstrap: str, topic: str, expected: int, timeout: float) -> tuple[int, int, int]:
    """(records, first LogAppendTime ms, last LogAppendTime ms), read_committed."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 << 20,
        }
    )
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    count = 0
    first = 1 << 62
    last = 0
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            msgs = c.consume(2000, 0.5)
            if not msgs and count >= expected:
                break
            for m in msgs:
                if m.error() is not None:
                    continue
                count += 1
                ts = m.timestamp()[1]
                first = min(first, ts)
                last = max(last, ts)
    finally:
        c.close()
    return count, first, last


def run_peer(
    bootstrap: str, peer: str, input_topic: str, n: int, *, batch: int, timeout: float
) -> Outcome:
    run = uuid.uuid4().hex[:8]
    out = f"bench.kafka.out.{peer}.{run}"
    group = f"bench.kafka.{peer}.{run}"
    conf = {"bootstrap.servers": bootstrap}
    ensure_topics(
        conf,
        [out],
        partitions=PARTITIONS,
        replication=1,
        config={out: {"message.timestamp.type": "LogAppendTime"}},
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BENCH_BOOTSTRAP": bootstrap,
        "BENCH_INPUT": input_topic,
        "BENCH_OUTPUT": out,
        "BENCH_GROUP": group,
        "BENCH_DATADIR": f"/tmp/bench-faust-{run}",
        "PYTHONWARNINGS": "ignore",
    }
    pargs = ["--bootstrap", bootstrap, "--input", input_topic, "--output", out, "--group", group]
    pargs += ["--batch-size", str(batch)]
    log = open(f"/tmp/bench-kafka-{peer}-{run}.log", "w")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    proc = subprocess.Popen(
        _peer_cmd(peer, pargs, env), env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
    )
    probe = Consumer({**conf, "group.id": "bench-probe"})
    wall = float("nan")
    count = first = last = 0
    cpu0 = cpu1 = 0.0
    seen0 = seen1 = 0
    try:
        end = t0 + timeout
        while time.monotonic() < end:
            seen = watermark_total(probe, out)
            if seen and not cpu0:
                cpu0, seen0 = _cpu_s(proc.pid), seen
            if seen >= n:
                wall = time.monotonic() - t0
                cpu1, seen1 = _cpu_s(proc.pid), seen
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{peer} exited with {proc.returncode}; see {log.name}")
            time.sleep(0.2)
        else:
            raise RuntimeError(
                f"{peer}: not all {n} outputs within {timeout:.0f} s; see {log.name}"
            )
        # Read back while it still runs: with exactly-once the watermarks count the transaction
        # markers too, so the last records may still be on their way.
        count, first, last = read_output(bootstrap, out, n, 60.0)
    finally:
        probe.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        delete_topics(bootstrap, [out, f"{out}.answers", f"{out}.dead"])
        shutil.rmtree(env["BENCH_DATADIR"], ignore_errors=True)
    span = max(last - first, 1) / 1000.0
    if count < n:
        raise RuntimeError(f"{peer}: {count} of {n} outputs read back")
    cpu_us = (cpu1 - cpu0) / max(seen1 - seen0, 1) * 1e6
    return Outcome(rate=count / span, count=count, span_s=span, wall_s=wall, cpu_us=cpu_us)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the end-to-end workload --------------------------------------------------------------------


@dataclass
class E2E:
    throughput: float
    p50: float | None
    p99: float | None
    ok: int
    answered: int
    extra: dict[str, Any] = field(default_factory=dict)


def _world_flags(spec: WorldSpec) -> list[str]:
    return [
        "--users",
        str(spec.users),
        "--items",
        str(spec.items),
        "--dim",
        str(spec.dim),
        "--seed",
        str(spec.seed),
    ]


def _start_workers(
    bootstrap: str, pipeline: str, groups: Sequence[str], spec: WorldSpec, eos: bool
) -> list[subprocess.Popen[str]]:
    procs = []
    for i, stages in enumerate(groups):
        cmd = [sys.executable, "-m", "jizhi.cli", "worker", "--stages", stages]
        cmd += ["--bootstrap", bootstrap, "--pipeline", pipeline, "--metrics-port", "0"]
        cmd += ["--instance", f"{pipeline}-{i}", *_world_flags(spec)]
        if eos:
            cmd.append("--exactly-once")
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        )
    # Ready when every worker's chains own partitions (its "assigned" line lists them all).
    ready = [threading.Event() for _ in procs]

    def watch(proc: subprocess.Popen[str], flag: threading.Event) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "assigned" in line and "[]" not in line:
                flag.set()
            if "error" in line.lower() or "Traceback" in line:
                print(f"  worker: {line.rstrip()}", file=sys.stderr)

    for proc, flag in zip(procs, ready, strict=True):
        threading.Thread(target=watch, args=(proc, flag), daemon=True).start()
    end = time.monotonic() + 120
    for flag in ready:
        if not flag.wait(max(0.0, end - time.monotonic())):
            _stop(procs)
            raise RuntimeError("workers did not get their partitions within 120 s")
    return procs


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _e2e_from(summary: dict[str, Any]) -> E2E:
    lat = summary["latency_ms"]
    return E2E(
        throughput=summary["throughput_rps"],
        p50=lat.get("p50"),
        p99=lat.get("p99"),
        ok=summary["ok"],
        answered=summary["answered"],
    )


def run_kafka_e2e(
    bootstrap: str,
    groups: Sequence[str],
    spec: WorldSpec,
    workload: Workload,
    *,
    rate: float,
    eos: bool,
) -> E2E:
    pipeline = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics_first = {"bootstrap.servers": bootstrap}
    ensure_pipeline_topics(
        ensure_topics_first,
        pipeline_of(PipelineSettings(name=pipeline)),
        partitions=PARTITIONS,
        replication=1,
    )
    procs = _start_workers(bootstrap, pipeline, groups, spec, eos)
    try:
        result = run_publish(
            PublishOptions(
                bootstrap=bootstrap,
                pipeline=pipeline,
                world=spec,
                workload=workload,
                rate=rate,
                answer_timeout_s=60.0,
                progress=False,
            )
        )
    finally:
        _stop(procs)
        delete_topics(bootstrap, topics_with_prefix(bootstrap, f"jizhi.{pipeline}."))
    e = _e2e_from(result.summary)
    e.extra["client_latency_ms"] = result.summary.get("client_latency_ms")
    return e


def run_embedded(spec: WorldSpec, workload: Workload, rate: float) -> E2E:
    settings = Settings(pipeline=PipelineSettings(default_timeout_ms=workload.timeout_ms))
    res = run_demo(
        DemoOptions(world=spec, workload=workload, rate=rate, settings=settings, progress=False)
    )
    if res.error is not None:
        raise RuntimeError(f"embedded pipeline failed: {res.error!r}")
    return _e2e_from(res.summary)


# -- the tables ---------------------------------------------------------------------------------


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("| " + " | ".join(cells) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def interleave(
    rounds: int, jobs: Sequence[tuple[str, Callable[[], Any]]], results: dict[str, list[Any]]
) -> None:
    for r in range(rounds):
        for name, job in jobs:
            t0 = time.monotonic()
            try:
                out = job()
            except Exception as exc:
                print(f"round {r + 1} {name}: FAILED {exc}", file=sys.stderr)
                continue
            results.setdefault(name, []).append(out)
            shown = getattr(out, "rate", None) or getattr(out, "throughput", 0.0)
            print(
                f"round {r + 1} {name:<22} {shown:>10,.0f}/s  ({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bootstrap", default=None, help="a broker (default: jizhi local up)")
    ap.add_argument("--messages", type=int, default=50_000, help="pass-through input (50000)")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64, help="jizhi's micro-batch (64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", default=",".join(PEERS), help="pass-through runs, comma-separated")
    ap.add_argument("--requests", type=int, default=10_000, help="end-to-end requests (10000)")
    ap.add_argument("--rate", type=float, default=0.0, help="paced e2e rate (0: half of slowest)")
    ap.add_argument("--only", default="pass,e2e", help="pass, e2e or both")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    bootstrap = broker(args.bootstrap)
    print(f"broker {bootstrap}; {os.cpu_count()} cpus", file=sys.stderr)
    figures: dict[str, Any] = {}
    report: list[str] = []

    if "pass" in only:
        topic, size = prefill(bootstrap, args.messages, args.candidates)
        peers = [p for p in args.peers.split(",") if p]
        timeout = max(120.0, args.messages / 500.0)
        jobs = [
            (
                p,
                (
                    lambda p=p: run_peer(
                        bootstrap, p, topic, args.messages, batch=args.batch_size, timeout=timeout
                    )
                ),
            )
            for p in peers
        ]
        res: dict[str, list[Outcome]] = {}
        interleave(args.rounds, jobs, res)
        rates = {p: med([o.rate for o in res.get(p, [])]) for p in peers}
        walls = {p: med([o.wall_s for o in res.get(p, [])]) for p in peers}
        j = rates.get("jizhi", float("nan"))
        cpus = {p: med([o.cpu_us for o in res.get(p, [])]) for p in peers}
        rows: list[tuple[str, ...]] = [
            ("pass-through", "events/s (median)", "runs", "jizhi / it", "CPU µs/event")
        ]
        for p in peers:
            runs = ", ".join(f"{o.rate:,.0f}" for o in res.get(p, []))
            rows.append((p, f"{rates[p]:,.0f}", runs, f"{j / rates[p]:.2f}x", f"{cpus[p]:.0f}"))
        head = (
            f"pass-through: {args.messages:,} events of {size:,} B (msgpack, {args.candidates} "
            f"candidates + scores), {PARTITIONS} partitions, {args.rounds} rounds interleaved"
        )
        report += [head, "", table(rows), ""]
        report.append(
            "process start to last output (s, median): "
            + ", ".join(f"{p} {walls[p]:.1f}" for p in peers)
        )
        report.append("")
        figures["pass_through"] = {
            "message_bytes": size,
            "messages": args.messages,
            "runs": {p: [o.__dict__ for o in v] for p, v in res.items()},
            "median_rate": rates,
        }

    if "e2e" in only:
        spec = WorldSpec()
        ensure_world(spec)
        sat = Workload(requests=args.requests, candidates=args.candidates, timeout_ms=60_000)

        def kafka(groups: Sequence[str], eos: bool) -> Callable[[Workload, float], E2E]:
            return lambda w, r: run_kafka_e2e(bootstrap, groups, spec, w, rate=r, eos=eos)

        kinds: list[tuple[str, Callable[[Workload, float], E2E]]] = [
            ("embedded", lambda w, r: run_embedded(spec, w, r)),
            ("kafka, 1 worker", kafka(ALL, False)),
            ("kafka, 3 workers", kafka(SPLIT, False)),
            ("kafka, 1 worker, EOS", kafka(ALL, True)),
            ("kafka, 3 workers, EOS", kafka(SPLIT, True)),
        ]
        sat_res: dict[str, list[E2E]] = {}
        interleave(args.rounds, [(k, functools.partial(f, sat, 0.0)) for k, f in kinds], sat_res)
        thr = {k: med([e.throughput for e in sat_res.get(k, [])]) for k, _ in kinds}
        rate = args.rate or round(0.5 * min(v for v in thr.values() if not math.isnan(v)), -1)
        paced = Workload(
            requests=min(args.requests, int(rate * 10)),
            candidates=args.candidates,
            timeout_ms=200.0,
        )
        pace_res: dict[str, list[E2E]] = {}
        pace_jobs = [(k, functools.partial(f, paced, rate)) for k, f in kinds]
        interleave(args.rounds, pace_jobs, pace_res)
        emb = thr["embedded"]
        rows = [
            (
                "end to end",
                "req/s saturated",
                "/ embedded",
                f"p50 ms @{rate:,.0f}/s",
                f"p99 ms @{rate:,.0f}/s",
                "ok",
            )
        ]
        for k, _ in kinds:
            pr = pace_res.get(k, [])
            p50 = med([e.p50 for e in pr if e.p50 is not None])
            p99 = med([e.p99 for e in pr if e.p99 is not None])
            ok = f"{sum(e.ok for e in pr):,}/{sum(e.answered for e in pr):,}"
            rows.append(
                (k, f"{thr[k]:,.0f}", f"{thr[k] / emb:.2f}", f"{p50:.1f}", f"{p99:.1f}", ok)
            )
        report += [
            f"end to end: {args.requests:,} requests of {args.candidates} candidates saturated "
            f"(timeout 60 s), then {paced.requests:,} at {rate:,.0f} req/s (timeout 200 ms); "
            f"world {spec.users:,} users x {spec.items:,} items x {spec.dim}; "
            f"{args.rounds} rounds interleaved",
            "",
            table(rows),
            "",
        ]
        figures["e2e"] = {
            "saturated": {k: [e.__dict__ for e in v] for k, v in sat_res.items()},
            "paced": {k: [e.__dict__ for e in v] for k, v in pace_res.items()},
            "rate": rate,
        }

    print("\n".join(report))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
