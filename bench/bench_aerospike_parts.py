"""Aerospike lookups in one batch against lookups cut into parts read concurrently, side by side.

    python -m bench.bench_aerospike_parts [--keys 12800] [--budget-ms 20] [--lookups 20]

No server: a model client whose ``batch_read`` takes ``base + per_key * keys`` (fitted to the
medians measured against a real Aerospike 8.1 on this machine's 2 shared cores: ~1k keys 12 ms,
2k 20 ms, 5k 41 ms, 12.8k 114 ms) and, past its ``total_timeout``, fails every record with -15,
as the real one did. It answers how the store's parts and deadline change the *shape* of the
result (how long a lookup takes, how many keys come back); the real cluster's figures need the
real cluster. The pool's own cost is measured for real with a client that answers at once.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from typing import Any

import numpy as np
from aerospike_helpers.batch.records import BatchRecord, BatchRecords

from storage import TableSpec
from storage.aerospike_store import AerospikeSettings, AerospikeStore

SPEC = TableSpec("bench", 32)
BLOB = np.zeros(32, dtype=np.float32).tobytes()


class ModelClient:
    def __init__(self, base_s: float, per_key_s: float) -> None:
        self.base_s, self.per_key_s = base_s, per_key_s

    def connect_as(self, conf: dict[str, Any]) -> ModelClient:
        return self

    def is_connected(self) -> bool:
        return True

    def batch_read(self, keys: list[Any], bins: Any = None, policy: Any = None) -> BatchRecords:
        took = self.base_s + self.per_key_s * len(keys)
        time.sleep(took)
        failed = took * 1000 > (policy or {}).get("total_timeout", 1000)
        out = []
        for key in keys:
            rec = BatchRecord(key)
            if failed:
                rec.result = -15
            else:
                rec.result, rec.record = 0, (key, {}, {"v": BLOB})
            out.append(rec)
        return BatchRecords(out)

    def close(self) -> None:
        pass


def _run(store: AerospikeStore, keys: int, lookups: int) -> tuple[float, float]:
    """Median lookup time (ms) and share of keys answered."""
    times, answered = [], []
    for i in range(lookups):
        ids = np.arange(i * keys, (i + 1) * keys, dtype=np.int64)
        t = time.perf_counter()
        got = store.get_many(SPEC.name, ids)
        times.append((time.perf_counter() - t) * 1000)
        answered.append(float(got.found.mean()))
        store.breaker.success()  # measure every lookup, not the breaker's refusals
    return statistics.median(times), statistics.mean(answered)


def _direct(client: ModelClient, keys: int, lookups: int, budget_ms: int) -> tuple[float, float]:
    """The store before this change: one ``batch_read`` of every key, waited for to the end."""
    times, answered = [], []
    for i in range(lookups):
        batch = [("jizhi", SPEC.name, k) for k in range(i * keys, (i + 1) * keys)]
        t = time.perf_counter()
        got = client.batch_read(batch, ["v"], {"total_timeout": budget_ms})
        times.append((time.perf_counter() - t) * 1000)
        answered.append(sum(r.result == 0 for r in got.batch_records) / keys)
    return statistics.median(times), statistics.mean(answered)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=12_800)
    p.add_argument("--budget-ms", type=int, default=20)
    p.add_argument("--lookups", type=int, default=20)
    args = p.parse_args()
    logging.disable(logging.WARNING)  # every lookup here is a "first failure" after a reset
    print(f"# {platform.machine()}, Python {platform.python_version()}; {args.keys:,} keys/lookup")
    base, per_key = 0.004, 8.2e-6  # the fit to the measured medians
    rows = [
        (
            "one batch, no bound (before)",
            *_direct(ModelClient(base, per_key), args.keys, args.lookups, args.budget_ms),
        )
    ]
    for label, max_keys, threads in (
        ("one batch, bounded", 1_000_000, 1),
        ("parts of 2000, 4 threads", 2000, 4),
        ("parts of 1000, 4 threads", 1000, 4),
        ("parts of 1000, 8 threads", 1000, 8),
    ):
        settings = AerospikeSettings(
            read_total_timeout_ms=args.budget_ms,
            read_batch_max_keys=max_keys,
            read_threads=threads,
            breaker_failures=10**6,
        )
        client = ModelClient(base, per_key)
        with AerospikeStore(settings, specs=[SPEC], client_factory=client.connect_as) as store:
            rows.append((label, *_run(store, args.keys, args.lookups)))
    print(f"\nmodel client, budget {args.budget_ms} ms")
    print(f"{'read':<28} {'median ms':>10} {'answered':>9}")
    for label, ms, share in rows:
        print(f"{label:<28} {ms:>10.1f} {share:>8.0%}")
    print("\npool overhead (client answers at once), 200 keys/lookup")
    ms, _ = _direct(ModelClient(0.0, 0.0), 200, args.lookups * 10, 1000)
    print(f"{'batch_read alone':<28} {ms * 1000:>8.0f} us")
    for label, max_keys in (("store, one part", 10_000), ("store, parts of 50", 50)):
        settings = AerospikeSettings(read_total_timeout_ms=1000, read_batch_max_keys=max_keys)
        client = ModelClient(0.0, 0.0)
        with AerospikeStore(settings, specs=[SPEC], client_factory=client.connect_as) as store:
            ms, _ = _run(store, 200, args.lookups * 10)
        print(f"{label:<28} {ms * 1000:>8.0f} us")


if __name__ == "__main__":
    main()
