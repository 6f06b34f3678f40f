"""The ``jizhi`` command line: parse flags into settings and hand them to the right module."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import msgspec
from confluent_kafka import KafkaException

from allocator.errors import AllocatorConfigError
from jizhi import allocator_cli, embeddings_cli, local, publish, worker
from jizhi.config import ConfigError, load_settings
from jizhi.demo import DemoOptions, format_summary, run_demo, write_summary
from jizhi.metrics_server import serve_metrics
from jizhi.synth import Workload, WorldSpec
from stages.errors import JizhiError, PipelineConfigError
from storage.errors import StorageError


def _demo(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    pipeline = msgspec.structs.replace(
        settings.service(args.pipeline),
        **{
            k: v
            for k, v in {
                "batch_size": args.batch_size,
                "default_timeout_ms": args.timeout_ms,
                "threads": args.threads,
            }.items()
            if v is not None
        },
    )
    store = settings.store
    if args.cache_mb is not None:
        store = msgspec.structs.replace(store, cache_bytes=int(args.cache_mb * (1 << 20)))
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    # The demo runs one service: the chosen one becomes the config's only pipeline.
    settings = msgspec.structs.replace(
        settings, pipeline=pipeline, pipelines=[], store=store, metrics_port=port
    )
    spec = WorldSpec(
        users=args.users,
        items=args.items,
        dim=args.dim,
        context_dim=settings.pipeline.context_dim,
        seed=args.seed,
    )
    workload = Workload(
        requests=args.requests,
        candidates=args.candidates,
        k=args.k,
        timeout_ms=settings.pipeline.default_timeout_ms,
        zipf=args.zipf,
        seed=args.seed,
    )
    if port:
        where = serve_metrics(port, settings.metrics_addr)
        print(f"metrics: {where}", file=sys.stderr)
    result = run_demo(
        DemoOptions(
            world=spec,
            workload=workload,
            rate=args.rate,
            settings=settings,
            world_root=args.world_dir,
            progress=not args.no_progress,
        )
    )
    print(format_summary(result.summary))
    if args.summary_json:
        write_summary(result.summary, args.summary_json)
        print(f"summary written to {args.summary_json}", file=sys.stderr)
    if result.error is not None:
        print(f"error: the pipeline stopped: {result.error!r}", file=sys.stderr)
        return 1
    if result.summary["unanswered"] or result.summary["duplicates"]:
        print("error: not every request was answered exactly once", file=sys.stderr)
        return 1
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline in one process on synthetic data (no services needed)",
        description="Generate (once) synthetic embeddings and a model, publish requests through "
        "ingest -> features -> embed -> score -> rank, and report throughput and latency.",
    )
    p.add_argument("--requests", type=int, default=20_000, help="requests to publish (20000)")
    p.add_argument(
        "--rate", type=float, default=2_000.0, help="requests/s; 0 = as fast as possible (2000)"
    )
    p.add_argument("--candidates", type=int, default=200, help="candidates per request (200)")
    p.add_argument("--k", type=int, default=10, help="items per answer (10)")
    p.add_argument("--dim", type=int, default=32, help="embedding dimension (32)")
    p.add_argument("--users", type=int, default=100_000, help="rows in the users table (100000)")
    p.add_argument("--items", type=int, default=1_000_000, help="rows in the items table (1000000)")
    p.add_argument(
        "--zipf", type=float, default=1.1, help="power-law exponent of item popularity (1.1)"
    )
    p.add_argument("--seed", type=int, default=7, help="seed for data, model and requests (7)")
    p.add_argument("--batch-size", type=int, default=None, help="micro-batch size per stage (64)")
    p.add_argument(
        "--timeout-ms", type=float, default=None, help="deadline budget per request (200)"
    )
    p.add_argument(
        "--threads",
        choices=["per_stage", "one"],
        default=None,
        help="a thread per stage, or the whole chain in one thread (one)",
    )
    p.add_argument("--cache-mb", type=float, default=None, help="local embedding cache size (64)")
    p.add_argument("--config", type=Path, default=None, help="TOML settings file")
    p.add_argument("--pipeline", default=None, help="which declared pipeline to run (the first)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port; 0 = off (9464)")
    p.add_argument("--world-dir", type=Path, default=None, help="where generated data is kept")
    p.add_argument("--summary-json", type=Path, default=None, help="also write the summary here")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jizhi", description="Real-time recommendation inference as a staged Kafka pipeline."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    local.register(sub)
    worker.register(sub)
    publish.register(sub)
    allocator_cli.register(sub)
    embeddings_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success, 2 for a wrong flag or setting (as argparse does), 1 for any other
    failure jizhi expects (a broker or store that does not answer, a missing table): those get one
    ``error:`` line, a traceback only with ``JIZHI_DEBUG=1``. Anything else is a bug and keeps its
    traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _expected(exc):
            raise
        if os.environ.get("JIZHI_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, _USAGE_ERRORS) else 1
    return code


# Mistakes in what the user asked for, as opposed to failures of what jizhi talks to.
_USAGE_ERRORS = (ConfigError, PipelineConfigError, AllocatorConfigError)


def _expected(exc: BaseException) -> bool:
    """Errors raised on purpose, and the failures of clients jizhi does not wrap everywhere:
    librdkafka's, Aerospike's (e.g. a user given to a server without security), and a path the
    user named that cannot be opened."""
    if isinstance(exc, JizhiError | StorageError | KafkaException):
        return True
    if isinstance(exc, OSError) and exc.filename is not None:
        return True
    return _aerospike_error(exc)


def _aerospike_error(exc: BaseException) -> bool:
    """Without importing the client: only a process that loaded it can have raised its errors."""
    module = getattr(sys.modules.get("aerospike"), "exception", None)
    base = getattr(module, "AerospikeError", None)
    return isinstance(base, type) and isinstance(exc, base)


def _one_line(exc: BaseException) -> str:
    """A multi-line message (a broker's log tail) keeps its lines; an empty one names its class."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or text}"
    if _aerospike_error(exc):  # its str() is a tuple: (code, message, file, line, in_doubt)
        args = exc.args
        msg = getattr(exc, "msg", None) or (args[1] if len(args) > 1 else text)
        code = getattr(exc, "code", None)
        return f"aerospike {type(exc).__name__} (code {code}): {msg}"
    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
        return f"Kafka: {exc.args[0].str()}"
    if not text or not isinstance(exc, JizhiError | StorageError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
