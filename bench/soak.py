"""The soak: a pipeline held at 80% of its measured capacity, and the trends of its workers'
memory and of p99 latency over the run.

    python -m bench.soak --bootstrap HOST:PORT --seconds 1800 [--fraction 0.8] [--json FILE]

A leak or a slowly filling queue shows up as a slope long before it shows up as an outage, and a
slope fitted over the whole run is not fooled by one slow second. Capacity is measured first, on
the same workers, with a burst far above what they can answer; the soak then runs open loop at
``fraction`` of it. RSS is each worker's VmRSS from /proc, sampled every second; p99 is taken per
window of answers. Both slopes are least-squares fits, reported per minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import Proc, bench_env, jizhi, rss_mib, world_args
from bench.traffic import WORLD, Traffic, TrafficOptions, slope


@dataclass(frozen=True, kw_only=True)
class SoakOptions:
    bootstrap: str
    pipeline: str
    seconds: float = 600.0
    fraction: float = 0.8
    probe_s: float = 6.0
    probe_rate: float = 3_000.0
    """Offered during the capacity probe: far above what the workers answer, so the answer
    rate measures them, not the offer."""
    window_s: float = 5.0
    skip_s: float | None = None
    """Left out of the fits: the first seconds fill caches and buffers and work off what the
    start-up queued (p99 fell from 1.2 s to 150 ms over the first 30 s of a 180 s run), which is
    not a trend. None: a quarter of the run, at most 30 s."""
    partitions: int = 4


@dataclass
class SoakResult:
    capacity_rps: float
    rate_rps: float
    seconds: float
    traffic: dict[str, Any]
    rss_start_mib: float
    rss_end_mib: float
    rss_slope_mib_per_min: float
    """The steepest of the workers' fitted slopes."""
    p99_start_ms: float
    p99_end_ms: float
    p99_slope_ms_per_min: float
    p99_windows: list[tuple[float, float]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_capacity(opts: SoakOptions) -> float:
    """Answers per second while a burst far above capacity drains: the rate between the first
    and the last answer, over everything answered."""
    probe = Traffic(
        TrafficOptions(
            bootstrap=opts.bootstrap,
            pipeline=opts.pipeline,
            rate=opts.probe_rate,
            seconds=opts.probe_s,
            partitions=opts.partitions,
            timeout_ms=300_000.0,
        )
    )
    probe.ready()
    probe.start()
    while probe.sending():
        time.sleep(0.1)
    report = probe.finish(answer_timeout_s=120.0)
    times = sorted(report.answered_at.values())
    if len(times) < 2 or times[-1] <= times[0]:
        raise RuntimeError(f"capacity probe got {len(times)} answers: are the workers running?")
    return (len(times) - 1) / (times[-1] - times[0])


def run_soak(opts: SoakOptions, pids: Sequence[int], out: Any = sys.stderr) -> SoakResult:
    """Measures capacity, then soaks at ``fraction`` of it while sampling ``pids``' memory."""
    capacity = measure_capacity(opts)
    rate = capacity * opts.fraction
    print(
        f"soak: capacity {capacity:,.0f} req/s; soaking at {rate:,.0f} req/s for "
        f"{opts.seconds:.0f} s",
        file=out,
        flush=True,
    )
    traffic = Traffic(
        TrafficOptions(
            bootstrap=opts.bootstrap,
            pipeline=opts.pipeline,
            rate=rate,
            seconds=opts.seconds,
            partitions=opts.partitions,
            timeout_ms=30_000.0,
        )
    )
    traffic.ready()
    rss: dict[int, list[tuple[float, float]]] = {pid: [] for pid in pids}
    start = time.monotonic()
    traffic.start()
    while traffic.sending():
        now = time.monotonic() - start
        for pid in pids:
            mib = rss_mib(pid)
            if mib is not None:
                rss[pid].append((now, mib))
        time.sleep(1.0)
    report = traffic.finish(answer_timeout_s=60.0)
    skip = opts.skip_s if opts.skip_s is not None else min(30.0, opts.seconds / 4)
    fitted = {pid: [p for p in points if p[0] >= skip] for pid, points in rss.items()}
    slopes = [slope(points) * 60.0 for points in fitted.values() if points]
    windows = report.p99_series(opts.window_s)
    kept = [w for w in windows if w[0] >= skip] or windows
    first = [points[0][1] for points in fitted.values() if points]
    last = [points[-1][1] for points in fitted.values() if points]
    return SoakResult(
        capacity_rps=round(capacity, 1),
        rate_rps=round(rate, 1),
        seconds=round(time.monotonic() - start, 1),
        traffic=report.summary(),
        rss_start_mib=round(sum(first), 1),
        rss_end_mib=round(sum(last), 1),
        rss_slope_mib_per_min=round(max(slopes, default=0.0), 3),
        p99_start_ms=round(kept[0][1], 1) if kept else 0.0,
        p99_end_ms=round(kept[-1][1], 1) if kept else 0.0,
        p99_slope_ms_per_min=round(slope(kept) * 60.0, 3),
        p99_windows=[(round(t, 1), round(p, 1)) for t, p in windows],
    )


def format_result(r: SoakResult) -> str:
    t = r.traffic
    return "\n".join(
        [
            f"capacity {r.capacity_rps:,.0f} req/s, soaked at {r.rate_rps:,.0f} req/s for "
            f"{r.seconds:.0f} s",
            f"published {t['published']:,}  answered {t['answered']:,}  lost {t['lost']:,}  "
            f"duplicated {t['duplicated']:,}  status {t['status']}",
            f"workers' RSS {r.rss_start_mib:.0f} -> {r.rss_end_mib:.0f} MiB (sum); steepest "
            f"slope {r.rss_slope_mib_per_min:+.2f} MiB/min",
            f"p99 {r.p99_start_ms:.1f} -> {r.p99_end_ms:.1f} ms; slope "
            f"{r.p99_slope_ms_per_min:+.2f} ms/min",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", required=True, help="a running Kafka (e.g. `jizhi local up`)")
    p.add_argument("--seconds", type=float, default=600.0, help="soak duration (600)")
    p.add_argument("--fraction", type=float, default=0.8, help="of measured capacity (0.8)")
    p.add_argument("--workdir", type=Path, default=None, help="logs and data (a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jizhi-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = f"soak-{int(time.time())}"
    env = bench_env(workdir)
    flags = [*("--pipeline", pipeline, "--metrics-port", "0"), *world_args(WORLD, workdir)]
    workers = [
        Proc(
            stages,
            jizhi("worker", args.bootstrap, "--stages", stages, *flags),
            workdir / f"worker-{stages}.log",
            env,
        )
        for stages in ("ingest,features", "embed", "score,rank")
    ]
    try:
        result = run_soak(
            SoakOptions(
                bootstrap=args.bootstrap,
                pipeline=pipeline,
                seconds=args.seconds,
                fraction=args.fraction,
            ),
            [w.popen.pid for w in workers],
        )
    finally:
        for w in workers:
            w.stop()
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    return 1 if result.traffic["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
