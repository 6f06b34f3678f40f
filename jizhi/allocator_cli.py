"""`jizhi allocator`: the reconcile loop against a Kafka cluster, with local `jizhi worker`
processes as consumers.

``--config`` is the same jizhi settings file the workers read (pipeline name, deadline, Kafka
client settings, metrics port); it is passed on to the workers it starts. The allocator's own
knobs (stages, utilisation target, cool-downs, ...) come from ``--allocator-config``, a TOML file
of their own (see docs/allocator.md).
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from allocator.actuators.local import LocalActuator, instance_name, jizhi_worker
from allocator.actuators.topics import AdmissionPublisher, PlanPublisher, grow_topic
from allocator.decide import AllocatorOptions, Decider
from allocator.errors import AllocatorConfigError
from allocator.observe import KafkaObserver, scrape
from allocator.policy import PartitionOptions, ScalingOptions, ShedOptions
from allocator.reconcile import Look, Reconciler
from jizhi.config import STAGE_ORDER, jizhi_home, load_settings
from jizhi.metrics_server import serve_metrics
from stages.runtime.kafka import ensure_topics, group_id, topic_name

log = logging.getLogger(__name__)


class AllocatorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    stages: list[str] = msgspec.field(default_factory=lambda: list(STAGE_ORDER))
    interval_s: float = 10.0
    worker_args: list[str] = []
    grow_partitions: bool = False
    shedding: bool = True
    assignment: bool = False
    """Named (static) workers and load-balanced partition plans on the control topic, instead of
    the group's cooperative-sticky assignor (which balances partition counts, not load)."""
    log_dir: str = ""
    scaling: ScalingOptions = ScalingOptions()
    partitions: PartitionOptions = PartitionOptions()
    shed: ShedOptions = ShedOptions()


def load(path: Path | None) -> AllocatorSettings:
    if path is None:
        return AllocatorSettings()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        settings = msgspec.convert(raw, AllocatorSettings)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AllocatorConfigError(f"allocator config {path}: {exc}") from exc
    except msgspec.ValidationError as exc:
        raise AllocatorConfigError(f"allocator config {path}: {exc}") from exc
    unknown = [s for s in settings.stages if s not in STAGE_ORDER]
    if unknown:
        raise AllocatorConfigError(f"{path}: stages: unknown {unknown}")
    try:
        settings.scaling.validate()
    except ValueError as exc:
        raise AllocatorConfigError(f"{path}: scaling: {exc}") from exc
    return settings


def _run(args: argparse.Namespace) -> int:
    s = load(args.allocator_config)
    settings = load_settings(args.config)
    kafka = msgspec.structs.replace(settings.kafka, bootstrap=args.bootstrap)
    conf: dict[str, Any] = dict(kafka.client_conf())
    p = args.pipeline or settings.pipeline.name
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    if port:
        print(f"metrics: {serve_metrics(port, settings.metrics_addr)}", file=sys.stderr)
    topics = {st: (topic_name(p, st), group_id(p, st)) for st in s.stages}
    control = f"jizhi.{p}.control"
    ensure_topics(
        conf,
        [control],
        partitions=1,
        replication=1,
        config={control: {"cleanup.policy": "compact"}},
    )
    log_dir = Path(s.log_dir) if s.log_dir else jizhi_home() / "allocator" / p
    actuator = LocalActuator(
        jizhi_worker(
            bootstrap=args.bootstrap,
            pipeline=p,
            config=args.config,
            extra=s.worker_args,
            static=s.assignment,
        ),
        log_dir=log_dir,
        names=functools.partial(instance_name, p) if s.assignment else None,
    )
    options = AllocatorOptions(
        scaling=s.scaling, partitions=s.partitions, shed=s.shed, shedding=s.shedding
    )
    reconciler = Reconciler(
        p,
        tuple(s.stages),
        KafkaObserver(conf, topics),
        actuator,
        Decider(options),
        # Its own workers' endpoints, plus any given: workers it did not start (compose, a dry run).
        scrape=lambda urls: scrape([*urls, *args.scrape], pipeline=p),
        deadline_s=settings.pipeline.default_timeout_ms / 1000.0,
        grow_partitions=(lambda st, n: grow_topic(conf, topic_name(p, st), n))
        if s.grow_partitions
        else None,
        publish_admission=AdmissionPublisher(conf, control) if s.shedding else None,
        plans=PlanPublisher(conf, control) if s.assignment else None,
        instances=actuator.instances,
        dry_run=args.dry_run,
        interval_s=s.interval_s,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def show(look: Look) -> None:
        if look.error:
            print(f"allocator: look failed: {look.error}", file=sys.stderr, flush=True)
            return
        d = look.decisions
        parts = [
            f"{x.name}={look.actual.get(x.name, 0)}->{x.consumers.desired}({x.consumers.reason})"
            for x in (d.stages if d else ())
        ]
        did = f" acted {' '.join(look.acted)}" if look.acted else ""
        print(f"allocator: {' '.join(parts)}{did} next in {look.requeue_after:.0f}s", flush=True)

    try:
        if args.once:
            show(reconciler.reconcile())
        else:
            reconciler.run(stop.is_set, on_look=show)
    finally:
        if not args.keep_workers:
            actuator.close()
    return 0


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "allocator",
        help="keep every stage just big enough: the reconcile loop over local workers",
        description="Observe lag, rates and latency per stage; decide consumers, partitions and "
        "admission; start and stop `jizhi worker` processes. Every decision is logged and "
        "exported as jizhi_allocator_* metrics with its reason.",
    )
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers HOST:PORT")
    p.add_argument(
        "--config", type=Path, default=None, help="jizhi TOML settings (shared with workers)"
    )
    p.add_argument(
        "--allocator-config", type=Path, default=None, help="the allocator's own TOML knobs"
    )
    p.add_argument("--pipeline", default=None, help="pipeline name (from --config, else demo)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port; 0 = off")
    p.add_argument(
        "--scrape",
        action="append",
        default=[],
        metavar="URL",
        help="also read this worker /metrics endpoint (repeatable): workers it did not start",
    )
    p.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")
    p.add_argument("--once", action="store_true", help="one look, then exit")
    p.add_argument("--keep-workers", action="store_true", help="leave the workers running on exit")
    p.set_defaults(func=_run)
