"""Embedding storage against its limits and against general-purpose KV stores, in one run.

    python -m bench.bench_storage [--rows 1000000] [--dim 32] [--batch 12800] [--zipf 1.1]

1. cache-hit path: a batch lookup served entirely by the LocalCache, against numpy's own gather
   (``take``) of the same ids from the whole table in RAM: the practical limit.
2. tiered path (LocalCache of 5% of the rows in front of the EmbeddedStore) at Zipf ``--zipf``:
   rows/s, cache hit ratio, p99 batch latency; next to the embedded store alone and the KV
   baselines (LMDB ``getmulti``, RocksDB through rocksdict ``get(list)``) on the same batches.
   Baselines that are not installed are listed as skipped.
3. the user-tower result cache on the demo's request mix (users uniform, and Zipf for contrast):
   hit ratio and scoring time with and without it.

Rows of the table are the seeded synthetic ones; batches are ``--batch`` ids (64 requests of 200
candidates by default, what the embed stage asks at once). Timings interleave the contenders batch
by batch and report medians, because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from storage import EmbeddedStore, LocalCache, TableSpec, TieredStore
from storage.results import ResultCache
from storage.synthetic import synthetic_rows, zipf_ids

Getter = Callable[[npt.NDArray[np.int64]], Any]


def _table(rows: int, dim: int) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = synthetic_rows(TableSpec("items", dim), 7, 0, rows)
    return out


def _timed(
    getters: dict[str, Getter], batches: list[npt.NDArray[np.int64]], rounds: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in getters}
    for _ in range(rounds):
        for b in batches:
            for name, get in getters.items():
                t = time.perf_counter()
                get(b)
                times[name].append(time.perf_counter() - t)
    return times


def _keys(ids: npt.NDArray[np.int64]) -> list[bytes]:
    """Big-endian 8-byte keys (sorted like the ids); numpy scalars would lose the byte order."""
    blob = ids.astype(">u8").tobytes()
    return [blob[i : i + 8] for i in range(0, len(blob), 8)]


def _lmdb(root: Path, table: npt.NDArray[np.float32]) -> Getter | str:
    try:
        import lmdb  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return "lmdb not installed"
    env = lmdb.open(
        str(root / "lmdb"), map_size=table.nbytes * 3 + (1 << 30), writemap=True, sync=False
    )
    keys = np.arange(table.shape[0], dtype=np.int64)
    with env.begin(write=True) as txn:
        cur = txn.cursor()
        cur.putmulti(zip(_keys(keys), (r.tobytes() for r in table), strict=True), append=True)
    dim = table.shape[1]

    def get(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        with env.begin() as txn:
            pairs = txn.cursor().getmulti(_keys(ids))
        out: npt.NDArray[np.float32] = np.frombuffer(
            b"".join(v for _, v in pairs), dtype=np.float32
        ).reshape(-1, dim)
        return out

    return get


def _rocksdict(root: Path, table: npt.NDArray[np.float32]) -> Getter | str:
    try:
        from rocksdict import Options, Rdict, WriteBatch  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return "rocksdict not installed"
    opts = Options(raw_mode=True)
    db = Rdict(str(root / "rocks"), opts)
    keys = np.arange(table.shape[0], dtype=np.int64)
    for lo in range(0, table.shape[0], 100_000):
        wb = WriteBatch(raw_mode=True)
        for k, r in zip(_keys(keys[lo : lo + 100_000]), table[lo : lo + 100_000], strict=True):
            wb.put(k, r.tobytes())
        db.write(wb)
    db.flush()
    dim = table.shape[1]

    def get(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        values: Any = db.get(list[Any](_keys(ids)))
        out: npt.NDArray[np.float32] = np.frombuffer(b"".join(values), dtype=np.float32).reshape(
            -1, dim
        )
        return out

    return get


def bench_hit_path(
    table: npt.NDArray[np.float32], batches: list[npt.NDArray[np.int64]], rounds: int
) -> list[tuple[str, float, float]]:
    spec = TableSpec("items", table.shape[1])
    hot = np.unique(np.concatenate(batches))
    cache = LocalCache(64 << 20)
    for _ in range(3):  # ask, then offer: what the tiered store does
        cache.get(spec, hot)
        cache.offer(spec, hot, table[hot])
    assert all(cache.get(spec, b).found.all() for b in batches), "the hot set must fit"
    times = _timed(
        {
            "numpy take (in-memory table)": lambda b: np.take(table, b, axis=0),
            "LocalCache.get, all hits": lambda b: cache.get(spec, b),
        },
        batches,
        rounds,
    )
    n = batches[0].shape[0]
    base = n / float(np.median(times["numpy take (in-memory table)"]))
    return [(k, n / float(np.median(v)), n / float(np.median(v)) / base) for k, v in times.items()]


def bench_tiered(
    root: Path,
    table: npt.NDArray[np.float32],
    batches: list[npt.NDArray[np.int64]],
    warm: list[npt.NDArray[np.int64]],
    rounds: int,
) -> tuple[list[tuple[str, float, float, float]], list[str]]:
    rows, dim = table.shape
    spec = TableSpec("items", dim)
    with EmbeddedStore(root / "embedded", durable=False) as w:
        w.create_table(spec)
        for lo in range(0, rows, 262_144):
            w.put_many("items", np.arange(lo, min(lo + 262_144, rows)), table[lo : lo + 262_144])
    entry = dim * 4 + 8 + 1 + 16  # row, key, tag, sketch counters
    cache_bytes = int(rows * 0.05) * entry
    tiered = TieredStore(EmbeddedStore(root / "embedded", mode="r"), LocalCache(cache_bytes))
    plain = EmbeddedStore(root / "embedded", mode="r")
    for b in warm:
        tiered.get_many("items", b)
    before = tiered.cache.stats("items")
    getters: dict[str, Getter] = {
        "tiered (5% LocalCache + embedded)": lambda b: tiered.get_many("items", b),
        "embedded store alone (mmap + RAM index)": lambda b: plain.get_many("items", b),
    }
    skipped: list[str] = []
    for name, make in (("LMDB getmulti", _lmdb), ("RocksDB (rocksdict) get(list)", _rocksdict)):
        got = make(root, table)
        if isinstance(got, str):
            skipped.append(f"{name}: {got}")
        else:
            np.testing.assert_array_equal(got(batches[0][:10]), table[batches[0][:10]])
            getters[name] = got
    times = _timed(getters, batches, rounds)
    after = tiered.cache.stats("items")
    looked = (after.hits - before.hits) + (after.misses - before.misses)
    hit = (after.hits - before.hits) / looked
    n = batches[0].shape[0]
    out = []
    for k, v in times.items():
        out.append(
            (
                k,
                n / float(np.median(v)),
                float(np.percentile(v, 99)) * 1e3,
                hit if k.startswith("tiered") else float("nan"),
            )
        )
    tiered.close()
    plain.close()
    return out, skipped


def bench_result_cache(
    requests: int, users: int, zipf: float, batch: int
) -> list[tuple[str, float, float, float]]:
    from stages.model import ModelShape, RankingModel  # noqa: PLC0415

    model = RankingModel.synthetic(ModelShape(user_dim=32, context_dim=16, item_dim=32), seed=7)
    rng = np.random.default_rng(3)
    user_table = synthetic_rows(TableSpec("users", 32), 1, 0, users)
    items = rng.standard_normal((batch * 200, 32)).astype(np.float32) * 0.18
    counts = np.full(batch, 200, dtype=np.int64)
    out = []
    for label, ids in (
        ("users uniform (the demo)", rng.integers(0, users, requests)),
        (f"users zipf {zipf}", zipf_ids(rng, users, requests, zipf)),
    ):
        ctx = np.zeros((requests, 16), dtype=np.float32)
        ctx[np.arange(requests), ids % 3] = 1.0  # device, fixed per user as in the demo
        inputs = np.concatenate([user_table[ids], ctx], axis=1)
        cache = ResultCache(16 << 20, dim=model.shape.tower_dim, ttl=60.0)
        t_plain = t_cached = t_tower = t_tower_cached = 0.0
        for lo in range(0, requests - batch + 1, batch):
            x, u = inputs[lo : lo + batch], ids[lo : lo + batch]
            t = time.perf_counter()
            towers = model.user_tower(x)
            t_tower += time.perf_counter() - t
            model.score_towers(towers, items, counts)
            t_plain += time.perf_counter() - t
            t = time.perf_counter()
            towers = cache.get_or_compute(model.version, u, x, model.user_tower)
            t_tower_cached += time.perf_counter() - t
            model.score_towers(towers, items, counts)
            t_cached += time.perf_counter() - t
        out.append((label, cache.hit_ratio(), t_tower_cached / t_tower, t_cached / t_plain))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--batch", type=int, default=12_800)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(11)
    table = _table(args.rows, args.dim)
    batches = [zipf_ids(rng, args.rows, args.batch, args.zipf) for _ in range(args.batches)]
    warm = [zipf_ids(rng, args.rows, args.batch, args.zipf) for _ in range(100)]
    cores, py = os.cpu_count(), platform.python_version()
    print(f"machine: {platform.machine()}, {cores} cores, Python {py}, numpy {np.__version__}")
    print(
        f"table {args.rows:,} x {args.dim} float32, {args.batch:,} ids a batch, zipf {args.zipf}\n"
    )

    print("1. cache-hit path")
    print(f"{'':40s} {'rows/s':>12s} {'x numpy':>8s}")
    for name, rate, ratio in bench_hit_path(table, batches, args.rounds):
        print(f"{name:40s} {rate / 1e6:10.1f} M {ratio:8.2f}")

    root = Path(tempfile.mkdtemp(prefix="jizhi-bench-"))
    try:
        rows, skipped = bench_tiered(root, table, batches, warm, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    best_kv = max(
        (r[1] for r in rows if r[0].startswith(("LMDB", "RocksDB"))), default=float("nan")
    )
    print(f"\n2. tiered path, zipf {args.zipf}, cache = 5% of rows")
    print(f"{'':40s} {'rows/s':>12s} {'p99 ms':>8s} {'hit':>6s} {'x best KV':>9s}")
    for name, rate, p99, hit in rows:
        hit_s = f"{'':6s}" if np.isnan(hit) else f"{hit:6.1%}"
        print(f"{name:40s} {rate / 1e6:10.2f} M {p99:8.2f} {hit_s} {rate / best_kv:9.1f}")
    for s in skipped:
        print(f"  skipped {s}")

    print("\n3. user-tower result cache, 64 requests x 200 candidates per batch")
    print(f"{'':28s} {'hit':>6s} {'tower time':>11s} {'score time':>11s}  (with cache / without)")
    for label, hit, tower, score in bench_result_cache(20_000, 100_000, args.zipf, 64):
        print(f"{label:28s} {hit:6.1%} {tower:11.2f} {score:11.2f}")


if __name__ == "__main__":
    main()
