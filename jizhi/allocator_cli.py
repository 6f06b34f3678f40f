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
import math
import signal
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from allocator.actuators.compose import ComposeActuator
from allocator.actuators.kubernetes import KubernetesActuator
from allocator.actuators.local import LocalActuator, instance_name, jizhi_worker
from allocator.actuators.topics import AdmissionPublisher, PlanPublisher, grow_topic
from allocator.decide import AllocatorOptions, Decider
from allocator.errors import ActuatorError, AllocatorConfigError
from allocator.history import History
from allocator.observe import scrape
from allocator.observe_kafka import KafkaObserver
from allocator.planner import curves, evaluate, plan_split, proportional_split
from allocator.policy import PartitionOptions, ScalingOptions, ShedOptions
from allocator.reconcile import Look, Reconciler
from jizhi.config import jizhi_home, load_settings, pipeline_of
from jizhi.metrics_server import serve_metrics
from stages.runtime.kafka import ensure_topics, group_id, input_topic

log = logging.getLogger(__name__)


class ComposeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """For ``actuator = "compose"`` (allocator/actuators/compose.py)."""

    project_dir: str = "compose"
    project: str = ""
    files: list[str] = []
    services: dict[str, str] = {}
    """stage -> compose service; default: the ``worker-<stage>...`` service running it."""
    docker: str = "docker"
    timeout_s: float = 120.0
    metrics_port: int = 0
    """The workers' metrics port if they publish it on the host (0: Prometheus scrapes them)."""


class KubernetesSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """For ``actuator = "kubernetes"`` (allocator/actuators/kubernetes.py)."""

    namespace: str = "default"
    deployments: dict[str, str] = {}
    """stage -> Deployment; default ``jizhi-<stage>``."""
    in_cluster: bool = False
    """Credentials of the pod's service account; otherwise a kubeconfig."""
    kubeconfig: str = ""
    """Default: KUBECONFIG, else ~/.kube/config."""
    metrics_port: int = 9464
    """The workers' metrics port, scraped on every running pod's IP (0: no scrape)."""


class AllocatorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actuator: Literal["local", "compose", "kubernetes"] = "local"
    """What starts and stops consumers: `jizhi worker` processes here, a compose service's
    replicas (``[compose]``) or a Deployment's (``[kubernetes]``)."""
    stages: list[str] = []
    """The stages it sizes; empty: every stage the pipeline declares."""
    interval_s: float = 10.0
    worker_args: list[str] = []
    grow_partitions: bool = False
    shedding: bool = True
    assignment: bool | None = None
    """Load-balanced partition plans on the control topic, followed by named workers, instead of
    the group's cooperative-sticky assignor (which balances partition counts, not load). None:
    on with the local actuator (it names its workers), off with compose and Kubernetes (their
    replicas are anonymous)."""
    log_dir: str = ""
    history: bool = True
    """Record every look and forecast from the same time on earlier days (allocator/history.py)."""
    history_dir: str = ""
    """Default: $JIZHI_HOME/allocator/<pipeline>/history."""
    history_days: int = 7
    scaling: ScalingOptions = ScalingOptions()
    partitions: PartitionOptions = PartitionOptions()
    shed: ShedOptions = ShedOptions()
    compose: ComposeSettings = ComposeSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()

    @property
    def plans(self) -> bool:
        return self.assignment if self.assignment is not None else self.actuator == "local"


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
    try:
        settings.scaling.validate()
    except ValueError as exc:
        raise AllocatorConfigError(f"{path}: scaling: {exc}") from exc
    if settings.actuator != "local" and settings.assignment is True:
        # Plans name their workers; replicas are anonymous dynamic group members.
        raise AllocatorConfigError(f'{path}: assignment = true needs actuator = "local"')
    for table, names in (
        ("compose.services", settings.compose.services),
        ("kubernetes.deployments", settings.kubernetes.deployments),
    ):
        stray = sorted(set(names) - set(settings.stages))
        if stray and settings.stages:  # empty: the pipeline's stages, checked when it is read
            raise AllocatorConfigError(f"{path}: {table}: not in stages: {stray}")
    return settings


def _actuator(
    s: AllocatorSettings, args: argparse.Namespace, pipeline: str
) -> LocalActuator | ComposeActuator | KubernetesActuator:
    if s.actuator == "kubernetes":
        k = s.kubernetes
        return KubernetesActuator.from_config(
            namespace=k.namespace,
            deployments={st: k.deployments.get(st, f"jizhi-{st}") for st in s.stages},
            in_cluster=k.in_cluster,
            kubeconfig=k.kubeconfig or None,
            metrics_port=k.metrics_port or None,
        )
    if s.actuator == "compose":
        c = s.compose
        return ComposeActuator(
            Path(c.project_dir),
            services=c.services or None,
            project=c.project or None,
            files=c.files,
            docker=c.docker,
            timeout_s=c.timeout_s,
            metrics_port=c.metrics_port or None,
        )
    return LocalActuator(
        jizhi_worker(
            bootstrap=args.bootstrap,
            pipeline=pipeline,
            config=args.config,
            extra=s.worker_args,
            static=s.plans,
        ),
        log_dir=Path(s.log_dir) if s.log_dir else jizhi_home() / "allocator" / pipeline,
        names=functools.partial(instance_name, pipeline) if s.plans else None,
    )


def _history(s: AllocatorSettings, pipeline: str) -> History:
    default = jizhi_home() / "allocator" / pipeline / "history"
    return History(Path(s.history_dir) if s.history_dir else default, days=s.history_days)


def _plan(s: AllocatorSettings, pipeline: str, cores: int) -> int:
    """Print the planner's split of ``cores`` consumers from the recorded history, against the
    proportional split, and the throughput each would reach."""
    history = _history(s, pipeline)
    samples = history.samples(in_flight_s=s.scaling.in_flight_s)
    by_stage = curves(samples, up_to=cores)
    missing = [st for st in s.stages if st not in by_stage]
    if missing:
        print(
            f"allocator: no backlogged looks recorded for {', '.join(missing)} in "
            f"{history.directory}; run the allocator through a busy period first",
            file=sys.stderr,
        )
        return 2
    stages = {st: by_stage[st] for st in s.stages}
    best = plan_split(stages, cores)
    prop = evaluate(proportional_split({st: c[1] for st, c in stages.items()}, cores), stages)
    print(f"history: {len(samples)} backlogged looks in {history.directory}")
    print(f"{'stage':<10} {'planned':>8} {'proportional':>13}   one-consumer events/s")
    for st in s.stages:
        print(f"{st:<10} {best.consumers[st]:>8} {prop.consumers[st]:>13}   {stages[st][1]:,.0f}")
    ratio = best.throughput / prop.throughput if prop.throughput else math.inf
    print(
        f"throughput: planned {best.throughput:,.0f}/s, proportional {prop.throughput:,.0f}/s "
        f"({ratio:.2f}x)"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    s = load(args.allocator_config)
    settings = load_settings(args.config).named(args.pipeline)
    service = settings.service(args.pipeline)
    pipe = pipeline_of(service)
    unknown = [st for st in s.stages if st not in pipe.names]
    if unknown:
        raise AllocatorConfigError(
            f"stages: {unknown} are not stages of pipeline {pipe.name!r} ({list(pipe.names)})"
        )
    s = msgspec.structs.replace(s, stages=list(s.stages or pipe.names))
    p = pipe.name
    if args.plan is not None:
        return _plan(s, p, args.plan)
    if not args.bootstrap:
        print("allocator: --bootstrap is required (except with --plan)", file=sys.stderr)
        return 2
    kafka = msgspec.structs.replace(settings.kafka, bootstrap=args.bootstrap)
    conf: dict[str, Any] = dict(kafka.client_conf())
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    if port:
        print(f"metrics: {serve_metrics(port, settings.metrics_addr)}", file=sys.stderr)
    topics = {st: (input_topic(pipe, st), group_id(p, st)) for st in s.stages}
    control = f"jizhi.{p}.control"
    ensure_topics(
        conf,
        [control],
        partitions=1,
        replication=1,
        config={control: {"cleanup.policy": "compact"}},
    )
    actuator = _actuator(s, args, p)
    options = AllocatorOptions(
        scaling=s.scaling, partitions=s.partitions, shed=s.shed, shedding=s.shedding
    )
    plans = PlanPublisher(conf, control) if s.plans else None
    reconciler = Reconciler(
        p,
        tuple(s.stages),
        KafkaObserver(conf, topics),
        actuator,
        Decider(options),
        # Its own workers' endpoints, plus any given: workers it did not start (compose, a dry run).
        scrape=lambda urls: scrape([*urls, *args.scrape], pipeline=p),
        deadline_s=service.default_timeout_ms / 1000.0,
        grow_partitions=(lambda st, n: grow_topic(conf, input_topic(pipe, st), n))
        if s.grow_partitions
        else None,
        publish_admission=AdmissionPublisher(conf, control) if s.shedding else None,
        plans=plans,
        instances=actuator.instances if isinstance(actuator, LocalActuator) else None,
        history=_history(s, p) if s.history else None,
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
        if not args.keep_workers and isinstance(actuator, LocalActuator):
            actuator.close()  # compose replicas outlive the allocator, as compose's own do
            if plans is not None and not args.dry_run:
                _withdraw(plans, s.stages)
    return 0


def _withdraw(plans: PlanPublisher, stages: list[str]) -> None:
    """The allocator's workers are gone: so go its plans, or workers started by hand later
    would idle under a plan that names none of them."""
    for st in stages:
        try:
            plans.withdraw(st)
        except ActuatorError as exc:
            print(f"allocator: plan of {st} not withdrawn: {exc}", file=sys.stderr)


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "allocator",
        help="keep every stage just big enough: the reconcile loop over local workers",
        description="Observe lag, rates and latency per stage; decide consumers, partitions and "
        "admission; start and stop `jizhi worker` processes. Every decision is logged and "
        "exported as jizhi_allocator_* metrics with its reason.",
    )
    p.add_argument("--bootstrap", default="", help="Kafka bootstrap servers HOST:PORT")
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
    p.add_argument(
        "--plan",
        type=int,
        default=None,
        metavar="CORES",
        help="print the best split of CORES consumers across stages from the recorded history "
        "(and the proportional split), then exit; needs no broker",
    )
    p.set_defaults(func=_run)
