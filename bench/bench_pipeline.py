"""The embedded pipeline against its compute-only limit, side by side in one run.

    python -m bench.bench_pipeline [--requests 20000] [--candidates 200] [--batch-size 64]

1. compute-only: the same store lookups (users, items through a fresh local cache) and the same
   model forward pass over the same requests, in a tight loop of micro-batches: no JSON, no events,
   no queues, no threads. This is what the pipeline could reach if it cost nothing.
2. pipeline at saturation: `jizhi demo` with rate 0 (publish as fast as backpressure allows).
3. pipeline at about half the saturation rate, open loop: the latency a user sees with headroom.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jizhi.assemble import cache_hit_ratio, open_store
from jizhi.config import PipelineSettings, Settings
from jizhi.demo import DemoOptions, run_demo
from jizhi.synth import Workload, WorldSpec, ensure_world, warm_up
from stages.model import RankingModel


def compute_only(
    spec: WorldSpec, workload: Workload, settings: Settings, batch: int
) -> dict[str, Any]:
    world = ensure_world(spec)
    store = open_store(settings, world.store_path)
    model = RankingModel.load(world.model_path)
    warm_up(store, spec, workload)  # as the pipeline run does
    ctx = np.zeros((batch, spec.context_dim), dtype=np.float32)
    chunks = list(workload.batches(spec, chunk=batch))
    t0 = time.perf_counter()
    n = 0
    for b in chunks:
        users = store.get_many("users", b.users).vectors
        items = store.get_many("items", b.candidates.ravel()).vectors
        counts = np.full(len(b.ids), b.candidates.shape[1], dtype=np.int64)
        user_in = np.concatenate([users, ctx[: len(b.ids)]], axis=1)
        model.score(user_in, items, counts)
        n += len(b.ids)
    elapsed = time.perf_counter() - t0
    hit = cache_hit_ratio(store, ("users", "items"))
    store.close()
    return {
        "requests": n,
        "elapsed_s": elapsed,
        "throughput_rps": n / elapsed,
        "cache_hit_ratio": hit,
    }


def pipeline(
    spec: WorldSpec, workload: Workload, settings: Settings, rate: float
) -> dict[str, Any]:
    result = run_demo(
        DemoOptions(
            world=spec,
            workload=workload,
            rate=rate,
            settings=settings,
            progress=False,
            pregenerate=rate <= 0,  # saturated: requests encoded ahead, as by another process
        )
    )
    if result.error is not None:
        raise RuntimeError(f"pipeline failed: {result.error!r}")
    return result.summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--threads", choices=["per_stage", "one"], default="one")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    spec = WorldSpec(users=args.users, items=args.items, dim=args.dim)
    settings = Settings(
        pipeline=PipelineSettings(
            batch_size=args.batch_size, default_timeout_ms=60_000, threads=args.threads
        )
    )
    saturate = Workload(requests=args.requests, candidates=args.candidates, timeout_ms=60_000)
    ensure_world(spec)

    limit = compute_only(spec, saturate, settings, args.batch_size)
    sat = pipeline(spec, saturate, settings, rate=0)
    half_rate = 0.5 * sat["throughput_rps"]
    paced = Workload(
        requests=min(args.requests, int(half_rate * 10)),
        candidates=args.candidates,
        timeout_ms=200.0,
    )
    half = pipeline(
        spec,
        paced,
        Settings(pipeline=PipelineSettings(batch_size=args.batch_size, threads=args.threads)),
        rate=half_rate,
    )

    ratio = sat["throughput_rps"] / limit["throughput_rps"]
    rows = [
        ("compute-only limit (lookups + model)", f"{limit['throughput_rps']:,.0f} req/s", ""),
        (
            "embedded pipeline, saturated",
            f"{sat['throughput_rps']:,.0f} req/s",
            f"ratio {ratio:.2f}",
        ),
        (
            f"embedded pipeline at {half_rate:,.0f} req/s (half)",
            f"p50 {half['latency_ms']['p50']:.2f} ms",
            f"p99 {half['latency_ms']['p99']:.2f} ms",
        ),
        ("  answered ok at half rate", f"{half['ok']:,}/{half['requests']:,}", ""),
        ("  cache hit ratio (saturated run)", f"{sat['cache_hit_ratio']:.1%}", ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    print(
        f"requests={args.requests} candidates={args.candidates} batch={args.batch_size} "
        f"items={args.items:,} dim={args.dim}"
    )
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>18}  {c}")
    figures = {"compute_only": limit, "saturated": sat, "half_rate": half, "ratio": ratio}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
