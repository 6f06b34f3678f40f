"""``jizhi embeddings load|generate``: fill an embedding table, on whichever backend is configured.

    jizhi embeddings load items.npy --table items [--ids item_ids.npy] [--config jizhi.toml]
    jizhi embeddings load items.parquet --table items --id-column id --vector-column vector
    jizhi embeddings generate --table items --rows 10000000 --dim 32 --seed 7
    jizhi embeddings demo-tables --config aerospike.toml   # the demo's users and items

Both write in chunks through the store's ``put_many`` (the embedded store appends and commits
each chunk; Aerospike gets ``batch_write`` calls), print a progress line with rows/s, and are
resumable: after each committed chunk the count of rows done is saved in a small checkpoint file,
and a rerun of the same command skips them. Puts overwrite, so at worst one chunk is written
twice. The checkpoint is keyed by the input (path, size, mtime) or the generator's parameters, and
by the destination (backend, path or hosts, namespace, table), so a changed input starts over
instead of resuming into the wrong rows, and the same input sent elsewhere is written there in
full instead of being skipped as done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from jizhi.config import ConfigError, Settings, jizhi_home, load_settings
from jizhi.synth import WorldSpec, demo_tables
from storage import TableSpec
from storage.synthetic import ZipfSampler, synthetic_rows

Chunk = tuple[npt.NDArray[np.int64], npt.NDArray[np.floating]]


class _Writable(Protocol):
    def create_table(self, spec: TableSpec, /, *, exist_ok: bool = False) -> None: ...

    def put_many(self, table: str, ids: Any, vectors: Any, /) -> None: ...

    def close(self) -> None: ...


def open_writer(settings: Settings) -> _Writable:
    """The configured backend, writable; the embedded store skips fsync per chunk (a load is
    redone from its checkpoint after a crash) but every chunk is still committed atomically."""
    store = settings.store
    if store.backend == "aerospike":
        from storage.aerospike_store import AerospikeStore  # noqa: PLC0415

        return AerospikeStore(store.aerospike)
    if not store.path:
        raise ConfigError("store.path: the embedded store needs a directory (or pass --store)")
    from storage import EmbeddedStore  # noqa: PLC0415

    return EmbeddedStore(Path(store.path), durable=False)


def destination(settings: Settings, table: str) -> dict[str, Any]:
    """Where rows of ``table`` go, as a checkpoint key: rows done in one place are not done in
    another."""
    store = settings.store
    if store.backend == "aerospike":
        return {
            "backend": "aerospike",
            "hosts": sorted(store.aerospike.hosts),
            "namespace": store.aerospike.namespace,
            "set": table,
        }
    return {"backend": store.backend, "path": str(Path(store.path).resolve()), "table": table}


# -- checkpoints -------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Rows done for one (input, table); saved atomically after every chunk."""

    path: Path
    key: dict[str, Any]
    done: int = 0

    @classmethod
    def open(cls, key: dict[str, Any], where: Path | None) -> Checkpoint:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = where or jizhi_home() / "loads" / f"{key['table']}-{digest}.json"
        done = 0
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                done = int(saved["done"])
        except (OSError, ValueError, KeyError):
            pass
        return cls(path, key, done)

    def save(self, done: int) -> None:
        self.done = done
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"key": self.key, "done": done}))
        os.replace(tmp, self.path)


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """One self-rewriting stderr line: rows, percent, rows/s, time left."""

    def __init__(self, total: int, start: int, *, enabled: bool) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.monotonic()
        self.last = 0.0

    def rate(self, done: int) -> float:
        return (done - self.start) / max(time.monotonic() - self.t0, 1e-9)

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        rate = self.rate(done)
        left = (self.total - done) / rate if rate > 0 else 0.0
        pct = 100.0 * done / self.total if self.total else 100.0
        width = 30
        bar = "#" * int(width * pct / 100)
        line = (
            f"\r[{bar:<{width}}] {done:,}/{self.total:,} rows {pct:5.1f}%  "
            f"{rate:,.0f} rows/s  {left:,.0f}s left"
        )
        print(line, end="\n" if final else "", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------------


def _npy_chunks(
    path: Path, ids_path: Path | None, start_id: int, chunk: int, skip: int
) -> tuple[int, int, Iterator[Chunk]]:
    vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise ConfigError(f"{path}: expected a 2-D float array, got {vectors.dtype}{vectors.shape}")
    n, dim = vectors.shape
    ids: npt.NDArray[np.int64] | None = None
    if ids_path is not None:
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        if ids.shape != (n,) or ids.dtype.kind not in "iu":
            raise ConfigError(f"{ids_path}: expected {n} integer ids, got {ids.dtype}{ids.shape}")

    def chunks() -> Iterator[Chunk]:
        for lo in range(skip, n, chunk):
            hi = min(lo + chunk, n)
            row_ids = (
                np.asarray(ids[lo:hi], dtype=np.int64)
                if ids is not None
                else np.arange(start_id + lo, start_id + hi, dtype=np.int64)
            )
            yield row_ids, np.asarray(vectors[lo:hi])

    return n, dim, chunks()


def _parquet_chunks(
    path: Path, id_col: str, vec_col: str, chunk: int, skip: int
) -> tuple[int, int, Iterator[Chunk]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError as e:
        raise ConfigError("Parquet input needs pyarrow: pip install 'jizhi[parquet]'") from e
    f = pq.ParquetFile(path)
    n = int(f.metadata.num_rows)
    names = f.schema_arrow.names
    for col in (id_col, vec_col):
        if col not in names:
            raise ConfigError(f"{path}: no column {col!r} (columns: {names})")
    vec_type = f.schema_arrow.field(vec_col).type
    dim = int(getattr(vec_type, "list_size", 0) or 0)
    if dim <= 0:  # a variable-size list: read the first row to learn the width
        first = next(f.iter_batches(batch_size=1, columns=[vec_col]))
        dim = len(first.column(0)[0])

    def chunks() -> Iterator[Chunk]:
        seen = 0
        for batch in f.iter_batches(batch_size=chunk, columns=[id_col, vec_col]):
            rows = batch.num_rows
            if seen + rows <= skip:
                seen += rows
                continue
            cut = max(skip - seen, 0)
            seen += rows
            ids = batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
            values = batch.column(1).flatten().to_numpy(zero_copy_only=False)
            if values.shape[0] != rows * dim:
                raise ConfigError(f"{path}: rows of {vec_col!r} are not all {dim} wide")
            yield ids[cut:], values.reshape(rows, dim)[cut:]

    return n, dim, chunks()


# -- commands ----------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.store is not None:
        store = msgspec.structs.replace(settings.store, path=str(args.store))
        settings = msgspec.structs.replace(settings, store=store)
    return settings


def _run(
    args: argparse.Namespace,
    settings: Settings,
    spec: TableSpec,
    *,
    total: int,
    chunks: Iterator[Chunk],
    cp: Checkpoint,
) -> int:
    writer = open_writer(settings)
    progress = Progress(total, cp.done, enabled=not args.no_progress)
    done = cp.done
    if done:
        print(f"resuming {spec.name!r} at row {done:,} ({cp.path})", file=sys.stderr)
    try:
        writer.create_table(spec, exist_ok=True)
        for ids, vectors in chunks:
            writer.put_many(spec.name, ids, vectors)
            done += ids.shape[0]
            cp.save(done)
            progress.update(done)
    finally:
        writer.close()
    progress.update(done, final=True)
    print(f"{spec.name}: {done:,} rows ({progress.rate(done):,.0f} rows/s)")
    return 0


def _load(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    stat = path.stat()
    settings = _settings(args)
    key = {
        "table": args.table,
        "input": str(path.resolve()),
        "size": stat.st_size,
        "mtime": int(stat.st_mtime),
        "ids": str(args.ids) if args.ids else None,
        "start_id": args.start_id,
        "dest": destination(settings, args.table),
    }
    cp = Checkpoint.open(key, args.checkpoint)
    if path.suffix == ".npy":
        total, dim, chunks = _npy_chunks(path, args.ids, args.start_id, args.chunk, cp.done)
    elif path.suffix in (".parquet", ".pq"):
        total, dim, chunks = _parquet_chunks(
            path, args.id_column, args.vector_column, args.chunk, cp.done
        )
    else:
        raise ConfigError(f"{path}: expected a .npy or .parquet file")
    return _run(
        args, settings, TableSpec(args.table, dim, args.dtype), total=total, chunks=chunks, cp=cp
    )


def _generate_into(
    args: argparse.Namespace,
    settings: Settings,
    spec: TableSpec,
    *,
    rows: int,
    seed: int,
    where: Path | None,
) -> int:
    key = {
        "table": spec.name,
        "rows": rows,
        "dim": spec.dim,
        "seed": seed,
        "dtype": spec.dtype,
        "dest": destination(settings, spec.name),
    }
    cp = Checkpoint.open(key, where)

    def chunks() -> Iterator[Chunk]:
        for lo in range(cp.done, rows, args.chunk):
            hi = min(lo + args.chunk, rows)
            yield np.arange(lo, hi, dtype=np.int64), synthetic_rows(spec, seed, lo, hi)

    return _run(args, settings, spec, total=rows, chunks=chunks(), cp=cp)


def _generate(args: argparse.Namespace) -> int:
    spec = TableSpec(args.table, args.dim, args.dtype)
    code = _generate_into(
        args, _settings(args), spec, rows=args.rows, seed=args.seed, where=args.checkpoint
    )
    if args.rows and args.zipf > 0:
        ideal = np.cumsum(ZipfSampler(args.rows, args.zipf, seed=args.seed).probabilities())
        shares = ", ".join(
            f"{int(f * 100)}% -> {ideal[max(int(args.rows * f) - 1, 0)]:.0%}"
            for f in (0.01, 0.05, 0.1)
        )
        print(f"requests drawn at zipf {args.zipf}: best hit ratio by cache size {shares}")
    return code


def _demo_tables(args: argparse.Namespace) -> int:
    """The demo's tables, with its seeds, into the configured backend (Aerospike, typically:
    the embedded demo generates its own under $JIZHI_HOME/worlds)."""
    settings = _settings(args)
    world = WorldSpec(users=args.users, items=args.items, dim=args.dim, seed=args.seed)
    for table in demo_tables(world):
        spec = msgspec.structs.replace(table.spec, dtype=args.dtype)
        code = _generate_into(args, settings, spec, rows=table.rows, seed=table.seed, where=None)
        if code:
            return code
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``jizhi embeddings`` and its two commands."""
    p = sub.add_parser("embeddings", help="load or generate embedding tables")
    cmds = p.add_subparsers(dest="embeddings_command", required=True)

    def common(q: argparse.ArgumentParser, *, table: bool = True) -> None:
        if table:
            q.add_argument("--table", required=True, help="table to write (created if absent)")
        q.add_argument(
            "--config", type=Path, default=None, help="TOML settings ([store] picks the backend)"
        )
        q.add_argument(
            "--store",
            type=Path,
            default=None,
            help="embedded store directory (overrides store.path)",
        )
        q.add_argument("--dtype", choices=("float32", "float16"), default="float32")
        q.add_argument("--chunk", type=int, default=65536, help="rows per put (65536)")
        if table:
            q.add_argument(
                "--checkpoint",
                type=Path,
                default=None,
                help="resume file (default under $JIZHI_HOME/loads)",
            )
        q.add_argument("--no-progress", action="store_true", help="no progress line")

    load = cmds.add_parser("load", help="load a .npy (rows x dim) or Parquet (id, vector) file")
    load.add_argument("path", type=Path)
    load.add_argument(
        "--ids", type=Path, default=None, help=".npy of int ids, one per row (.npy input)"
    )
    load.add_argument(
        "--start-id", type=int, default=0, help="id of the first row when --ids is absent (0)"
    )
    load.add_argument("--id-column", default="id", help="Parquet id column (id)")
    load.add_argument(
        "--vector-column", default="vector", help="Parquet list<float> column (vector)"
    )
    common(load)
    load.set_defaults(func=_load)

    gen = cmds.add_parser("generate", help="write a seeded synthetic table, ids 0..rows-1")
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--dim", type=int, default=32)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument(
        "--zipf",
        type=float,
        default=1.1,
        help="exponent requests are drawn with (1.1), for the hit-ratio hint",
    )
    common(gen)
    gen.set_defaults(func=_generate)

    world = WorldSpec()
    demo = cmds.add_parser(
        "demo-tables",
        help="write the demo's users and items tables, with its seeds, to the configured backend",
        description="Run before `jizhi demo` or the workers on Aerospike: the embedded demo "
        "generates its tables itself, Aerospike must be loaded. Pass the same --users, --items, "
        "--dim and --seed as to `jizhi demo`.",
    )
    demo.add_argument("--users", type=int, default=world.users, help=f"({world.users})")
    demo.add_argument("--items", type=int, default=world.items, help=f"({world.items})")
    demo.add_argument("--dim", type=int, default=world.dim, help=f"({world.dim})")
    demo.add_argument("--seed", type=int, default=world.seed, help=f"({world.seed})")
    common(demo, table=False)
    demo.set_defaults(func=_demo_tables)
