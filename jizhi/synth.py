"""A synthetic world for the demo, tests and benchmarks: embedding tables, a model, requests.

Everything derives from one seed, so two runs with the same flags score the same candidates the
same way. Tables are written once per parameter set under ``$JIZHI_HOME/worlds/`` and reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from jizhi.config import jizhi_home
from stages.model import ModelShape, RankingModel
from storage import EmbeddedStore, Store, TableSpec, TieredStore
from storage.synthetic import generate_table, zipf_ids


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """The knobs that change the generated data (and so its cache key)."""

    users: int = 100_000
    items: int = 1_000_000
    dim: int = 32
    context_dim: int = 16
    seed: int = 7

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class World:
    spec: WorldSpec
    root: Path

    @property
    def store_path(self) -> Path:
        return self.root / "store"

    @property
    def model_path(self) -> Path:
        return self.root / "model.npz"


@dataclass(frozen=True, slots=True)
class DemoTable:
    spec: TableSpec
    rows: int
    seed: int


def demo_tables(spec: WorldSpec) -> list[DemoTable]:
    """The demo's tables and the seeds their rows come from: the one list that both the
    embedded world and ``jizhi embeddings demo-tables`` (Aerospike) write, so both backends
    hold the same rows and score the same candidates alike."""
    return [
        DemoTable(TableSpec(name, dim=spec.dim), rows, spec.seed * 1000 + salt)
        for name, rows, salt in (("users", spec.users, 1), ("items", spec.items, 2))
    ]


def ensure_world(spec: WorldSpec, root: Path | None = None) -> World:
    """Generate the tables and model unless a complete copy for ``spec`` already exists."""
    base = root if root is not None else jizhi_home() / "worlds"
    world = World(spec, base / spec.key())
    marker = world.root / "complete.json"
    if marker.exists():
        return world
    world.root.mkdir(parents=True, exist_ok=True)
    store = EmbeddedStore(world.store_path)
    try:
        for table in demo_tables(spec):
            generate_table(store, table.spec, rows=table.rows, seed=table.seed)
    finally:
        store.close()
    shape = ModelShape(user_dim=spec.dim, context_dim=spec.context_dim, item_dim=spec.dim)
    RankingModel.synthetic(shape, seed=spec.seed).save(world.model_path)
    marker.write_text(json.dumps(asdict(spec)))
    return world


_DEVICES = ("ios", "android", "web")


class _WireRequest(msgspec.Struct, omit_defaults=True):
    request_id: str
    user_id: int
    candidates: list[int]
    k: int
    context: dict[str, str | int]
    deadline_ms: int | None = None
    created_at_ms: float | None = None
    timeout_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests as a client would publish them: power-law popular candidates, uniform users."""

    requests: int
    candidates: int = 200
    k: int = 10
    timeout_ms: float = 200.0
    zipf: float = 1.1
    seed: int = 7

    def batches(self, spec: WorldSpec, chunk: int = 256) -> Iterator[RequestBatch]:
        """The workload in chunks of ``chunk`` requests, generated vectorized in fixed blocks so
        that the same seed gives the same requests whatever the chunk size."""
        rng = np.random.default_rng(self.seed)
        for block in range(0, self.requests, _BLOCK):
            n = min(_BLOCK, self.requests - block)
            users = rng.integers(0, spec.users, size=n, dtype=np.int64)
            cands = zipf_ids(rng, spec.items, n * self.candidates, self.zipf).reshape(
                n, self.candidates
            )
            for start in range(0, n, chunk):
                end = min(n, start + chunk)
                yield RequestBatch(
                    ids=[f"req-{self.seed}-{block + i}" for i in range(start, end)],
                    users=users[start:end],
                    candidates=cands[start:end],
                )


_BLOCK = 256  # small enough that generating a block never stalls a paced publisher


def warm_up(store: Store, spec: WorldSpec, workload: Workload, requests: int = 2048) -> int:
    """Look up what a burst of this workload would, so the cache's arrays are allocated, the
    popular rows admitted and the table files mapped before the clock starts (a worker that
    just started is cold; a serving one is not). Returns the rows the cache admitted.

    A tiered store is warmed in chunks (``TieredStore.warm``): one lookup of the whole burst
    is ~70k distinct keys, which Aerospike on shared cores fails almost entirely and would
    count as degraded answers before the first request.
    """
    rng = np.random.default_rng(workload.seed ^ 0x5A5A)
    admitted = 0
    for _ in range(4):  # admission wants a row seen more than once before it is kept
        users = rng.integers(0, spec.users, size=requests, dtype=np.int64)
        items = zipf_ids(rng, spec.items, requests * workload.candidates, workload.zipf)
        for table, ids in (("users", users), ("items", items)):
            if isinstance(store, TieredStore):
                admitted += store.warm(table, ids)
            else:
                store.get_many(table, ids)
    return admitted


def publish_chunk(rate: float) -> int:
    """Requests a publisher sends per step: whole batches when unpaced, about 2 ms worth when
    paced (so the schedule stays smooth)."""
    return 64 if rate <= 0 else max(1, min(64, int(rate / 500)))


@dataclass(frozen=True, slots=True)
class RequestBatch:
    ids: list[str]
    users: npt.NDArray[np.int64]
    candidates: npt.NDArray[np.int64]


class RequestEncoder:
    """JSON encoding of generated requests, stamped with their send time."""

    def __init__(self, workload: Workload) -> None:
        self._w = workload
        self._enc = msgspec.json.Encoder()

    def encode(
        self, request_id: str, user: int, candidates: list[int], created_ms: float | None
    ) -> bytes:
        """With ``created_ms`` the request carries its send time and an absolute deadline; with
        None (encoded ahead of time) a relative timeout, so ingest starts its clock."""
        hour_of = created_ms if created_ms is not None else time.time() * 1000.0
        context: dict[str, str | int] = {
            "device": _DEVICES[user % 3],
            "hour": int(hour_of // 3_600_000) % 24,
        }
        if created_ms is None:
            wire = _WireRequest(
                request_id, user, candidates, self._w.k, context, timeout_ms=self._w.timeout_ms
            )
        else:
            wire = _WireRequest(
                request_id,
                user,
                candidates,
                self._w.k,
                context,
                deadline_ms=int(created_ms + self._w.timeout_ms),
                created_at_ms=created_ms,
            )
        return self._enc.encode(wire)
