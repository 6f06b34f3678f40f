"""Before and after a change, side by side in one run: `bench.bench_pipeline` at two commits.

    python -m bench.bench_commits BEFORE_REV [--rounds 3] [--requests 20000]

Checks ``BEFORE_REV`` out into a temporary git worktree, then runs the pipeline benchmark there
and in this working tree alternately (before, after, before, after, ...), so drift of a busy or
throttled machine falls on both sides alike, and prints the medians and their ratios. Both runs
use this interpreter and the same cached synthetic world ($JIZHI_HOME), so only the code differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIGURES = (
    ("compute-only req/s", ("compute_only", "throughput_rps")),
    ("saturated req/s", ("saturated", "throughput_rps")),
    ("ratio to compute-only", ("ratio",)),
    ("half-rate p50 ms", ("half_rate", "latency_ms", "p50")),
    ("half-rate p99 ms", ("half_rate", "latency_ms", "p99")),
)


def _run(tree: Path, requests: int, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_pipeline",
            "--requests",
            str(requests),
            "--json",
            str(out),
        ],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


def _pick(figures: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="the git revision to compare against (e.g. HEAD~3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jizhi-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(before), args.before],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        try:
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for r in range(args.rounds):
                for side, tree in (("before", before), ("after", REPO)):
                    runs[side].append(_run(tree, args.requests, Path(tmp) / f"{side}-{r}.json"))
                    print(f"round {r + 1}/{args.rounds}: {side} done", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False
            )
    print(f"bench_pipeline --requests {args.requests}, medians of {args.rounds} interleaved runs")
    print(f"{'figure':<24} {'before':>10} {'after':>10} {'after/before':>13}")
    for label, path in FIGURES:
        sides = []
        for side in ("before", "after"):
            values = [v for f in runs[side] if (v := _pick(f, path)) is not None]
            sides.append(statistics.median(values) if values else None)
        b, a = sides
        ratio = f"{a / b:13.3f}" if a is not None and b else f"{'-':>13}"
        fmt = [f"{x:10.2f}" if x is not None else f"{'-':>10}" for x in sides]
        print(f"{label:<24} {fmt[0]} {fmt[1]} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
