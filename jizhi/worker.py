"""`jizhi worker`: runs of some pipelines' stages in one process, between Kafka topics.

The command parses flags into settings and deployments and hands them to
`stages.runtime.kafka.KafkaWorker`, which builds the chains; see there for how stages are joined.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from jizhi.assemble import Once, batch_policies, open_store, stage_context
from jizhi.config import (
    ConfigError,
    PipelineSettings,
    Settings,
    jizhi_home,
    load_settings,
    pipeline_of,
)
from jizhi.synth import World, WorldSpec, ensure_world
from jizhi.world_args import add_world_args, world_spec
from stages.errors import PipelineConfigError
from stages.model import RankingModel
from stages.runtime.kafka import Deployment, KafkaOptions, KafkaWorker
from stages.runtime.kafka.reach import require_broker
from storage import TieredStore

log = logging.getLogger(__name__)

__all__ = ["parse_stages", "register", "run_until_signalled"]


def parse_stages(
    settings: Settings, specs: Sequence[str], *, default: str | None = None
) -> dict[str, list[str]]:
    """``--stages`` values as {pipeline: stage names}.

    Each value is ``[PIPELINE:]STAGE,STAGE,...`` or ``[PIPELINE:]all``; without ``PIPELINE:`` it
    means ``default`` (or else the only, or first, declared pipeline). Names are checked against
    the pipeline's declared order here, before any data is generated or any topic touched.
    """
    if not specs:
        raise ConfigError("--stages: give at least one, e.g. --stages ingest,features")
    chosen: dict[str, list[str]] = {}
    for spec in specs:
        head, sep, tail = spec.rpartition(":")
        declared = settings.service(head if sep else default)
        pipe = pipeline_of(declared)
        names = [n.strip() for n in tail.split(",") if n.strip()]
        if names == ["all"]:
            names = list(pipe.names)
        if pipe.name in chosen:
            raise ConfigError(f"--stages: pipeline {pipe.name!r} given twice")
        try:
            pipe.chains(names)
        except PipelineConfigError as exc:
            raise ConfigError(f"--stages {spec!r}: {exc}") from exc
        chosen[pipe.name] = names
    return chosen


def run_until_signalled(worker: KafkaWorker, out: Any = sys.stderr) -> int:
    """Serve until SIGTERM/SIGINT (or a stage fails); then drain and exit."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    shown: dict[str, list[int]] = {}
    running = worker.describe()
    what: Any = running[next(iter(running))] if len(running) == 1 else running
    print(f"jizhi worker {os.getpid()}: running {what}", file=out, flush=True)
    while not stop.wait(0.1):
        now = worker.assignments()
        if now != shown:
            print(f"jizhi worker {os.getpid()}: assigned {now}", file=out, flush=True)
            shown = now
        if worker.error is not None or worker.finished():
            break
    print(f"jizhi worker {os.getpid()}: draining", file=out, flush=True)
    clean = worker.stop()
    if worker.error is not None:
        print(f"error: a stage stopped: {worker.error!r}", file=out, flush=True)
        return 1
    print(
        f"jizhi worker {os.getpid()}: stopped {'cleanly' if clean else 'with leftovers'}",
        file=out,
        flush=True,
    )
    return 0 if clean else 3


# -- the command line ---------------------------------------------------------------------------


def _locked_world(spec: WorldSpec, root: Path | None) -> World:
    """`ensure_world` under a file lock: workers started together generate the data once."""
    lock_dir = root if root is not None else jizhi_home() / "worlds"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".world.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            return ensure_world(spec, root)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _settings_from(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    kafka = settings.kafka
    overrides: dict[str, Any] = {"bootstrap": args.bootstrap}
    if args.partitions is not None:
        overrides["partitions"] = args.partitions
    if args.replication is not None:
        overrides["replication"] = args.replication
    if args.exactly_once:
        overrides["exactly_once"] = True
    kafka = msgspec.structs.replace(kafka, **overrides)
    pipeline = settings.named(args.pipeline).pipeline
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    try:
        return msgspec.convert(
            msgspec.to_builtins(
                msgspec.structs.replace(settings, kafka=kafka, pipeline=pipeline, metrics_port=port)
            ),
            Settings,
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"worker flags: {exc}") from exc


class _Resources:
    """The store and models this process opens, each once and only when a stage asks."""

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self._settings = settings
        self._args = args
        self._world = Once(self._make_world)
        self.store = Once(self._open_store)
        self._models: dict[str, Once[RankingModel]] = {}

    def _make_world(self) -> World:
        spec = world_spec(self._args, self._settings.pipeline.context_dim)
        print(
            f"no store.path or model.path configured: using the synthetic world {spec}",
            file=sys.stderr,
            flush=True,
        )
        return _locked_world(spec, self._args.world_dir)

    def _open_store(self) -> TieredStore:
        s = self._settings.store
        if s.backend == "embedded" and not s.path:
            return open_store(self._settings, self._world().store_path)
        return open_store(self._settings, Path(s.path) if s.path else None)

    def model(self, p: PipelineSettings) -> Once[RankingModel]:
        path = self._settings.model_path(p)
        if path not in self._models:
            self._models[path] = Once(
                lambda: RankingModel.load(Path(path) if path else self._world().model_path)
            )
        return self._models[path]

    def close(self) -> None:
        store = self.store.opened
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


def deployments(
    settings: Settings, chosen: dict[str, list[str]], resources: _Resources
) -> list[Deployment]:
    out = []
    for name, names in chosen.items():
        p = settings.service(name)
        out.append(
            Deployment(
                pipeline=pipeline_of(p),
                stages=names,
                context=stage_context(settings, p, store=resources.store, model=resources.model(p)),
                policies=batch_policies(p),
                queue_capacity=p.queue_capacity,
                threads=p.threads,
            )
        )
    return out


def _run(args: argparse.Namespace) -> int:
    from jizhi.metrics_server import serve_metrics  # noqa: PLC0415 - CLI path only

    settings = _settings_from(args)
    chosen = parse_stages(settings, args.stages, default=args.pipeline)
    resources = _Resources(settings, args)
    try:
        planned = deployments(settings, chosen, resources)
        if settings.metrics_port:
            print(
                f"metrics: {serve_metrics(settings.metrics_port, settings.metrics_addr)}",
                file=sys.stderr,
            )
        k = settings.kafka
        conf = k.client_conf()
        require_broker(conf, timeout_s=k.connect_timeout_s)
        label = "-".join(f"{p}.{'-'.join(n)}" for p, n in chosen.items())
        worker = KafkaWorker(
            planned,
            KafkaOptions(
                conf=conf,
                partitions=k.partitions,
                replication=k.replication,
                exactly_once=k.exactly_once,
            ),
            client_id=f"jizhi-{label}-{os.getpid()}"[:200],
            instance=args.instance,
        )
        return run_until_signalled(worker)
    finally:
        resources.close()


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run some stages of a pipeline as Kafka consumer groups",
        description="Run the given stages of one or more declared pipelines between Kafka topics "
        "until SIGTERM/SIGINT, then drain, flush, commit and exit. Consecutive stages share "
        "memory; each chain's first stage is the consumer group jizhi.<pipeline>.<stage>.",
    )
    p.add_argument(
        "--stages",
        required=True,
        action="append",
        help="[PIPELINE:]STAGE,STAGE,... or [PIPELINE:]all, in the pipeline's order; repeat it "
        "to serve stages of several pipelines (e.g. --stages home:all --stages promo:ingest)",
    )
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers HOST:PORT")
    p.add_argument("--config", type=Path, default=None, help="TOML settings file")
    p.add_argument(
        "--pipeline",
        default=None,
        help="with one [pipeline]: its name (demo); with [[pipelines]]: the one --stages "
        "means when it names none",
    )
    p.add_argument(
        "--partitions", type=int, default=None, help="partitions of topics it creates (6)"
    )
    p.add_argument(
        "--replication", type=int, default=None, help="replication of topics it creates (1)"
    )
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port; 0 = off (9464)")
    p.add_argument(
        "--exactly-once", action="store_true", help="Kafka transactions (kafka.exactly_once)"
    )
    p.add_argument(
        "--instance",
        default=None,
        help="stable name of this worker across restarts (static membership, transactional.id)",
    )
    add_world_args(p)
    p.set_defaults(func=_run)
