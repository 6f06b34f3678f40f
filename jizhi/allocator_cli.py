"""`jizhi allocator`: the reconcile loop against a Kafka cluster, with local `jizhi worker`
processes as consumers.

``--config`` is the same jizhi settings file the workers read (its pipelines, their deadlines and
priorities, Kafka client settings, metrics port); it is passed on to the workers it starts. Every
service it declares is sized by one process (``--pipeline`` picks one), one `Reconciler` each,
under one core budget (``--budget``; `allocator.fleet.Fleet`). The allocator's own
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from allocator.actuators.compose import ComposeActuator
from allocator.actuators.kubernetes import KubernetesActuator
from allocator.actuators.local import LocalActuator, instance_name, jizhi_worker
from allocator.actuators.topics import AdmissionPublisher, PlanPublisher, grow_topic
from allocator.budget import ServiceAsk, StageAsk, split_budget
from allocator.decide import AllocatorOptions, Decider
from allocator.errors import ActuatorError, AllocatorConfigError
from allocator.fleet import Fleet, FleetLook, Service
from allocator.history import History
from allocator.observe import scrape
from allocator.observe_kafka import KafkaObserver
from allocator.planner import Curve, curves, evaluate, plan_split, proportional_split
from allocator.policy import PartitionOptions, ScalingOptions, ShedOptions
from allocator.reconcile import Reconciler
from jizhi.config import PipelineSettings, Settings, jizhi_home, load_settings, pipeline_of
from jizhi.metrics_server import serve_metrics
from stages.pipeline import Pipeline
from stages.runtime.kafka import ensure_control_topic, group_id, input_topic
from stages.runtime.kafka.reach import require_broker

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
    """Default: $JIZHI_HOME/allocator/<pipeline>/history; given, with several services
    declared, each keeps its own under ``<history_dir>/<pipeline>`` (``log_dir`` likewise)."""
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
    s: AllocatorSettings, args: argparse.Namespace, pipeline: str, *, several: bool = False
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
        log_dir=_per_pipeline(s.log_dir, pipeline, several, "allocator", pipeline),
        names=functools.partial(instance_name, pipeline) if s.plans else None,
    )


def _per_pipeline(given: str, pipeline: str, several: bool, *default: str) -> Path:
    """A directory of one service: ``given`` (``given/<pipeline>`` when the allocator runs
    several), else ``$JIZHI_HOME/<default...>``."""
    if not given:
        return jizhi_home().joinpath(*default)
    return Path(given) / pipeline if several else Path(given)


def _history(s: AllocatorSettings, pipeline: str, *, several: bool = False) -> History:
    directory = _per_pipeline(s.history_dir, pipeline, several, "allocator", pipeline, "history")
    return History(directory, days=s.history_days)


@dataclass(frozen=True, slots=True)
class _Service:
    """One declared service as the allocator sizes it."""

    settings: PipelineSettings
    pipeline: Pipeline
    stages: list[str]

    @property
    def name(self) -> str:
        return self.pipeline.name


def _services(s: AllocatorSettings, settings: Settings, only: str | None) -> list[_Service]:
    """The services to size: ``only`` (``--pipeline``), else every one the config declares; each
    with the allocator's ``stages`` (every stage the pipeline declares when empty)."""
    out = []
    for svc in [settings.service(only)] if only else settings.services:
        pipe = pipeline_of(svc)
        unknown = [st for st in s.stages if st not in pipe.names]
        if unknown:
            raise AllocatorConfigError(
                f"stages: {unknown} are not stages of pipeline {pipe.name!r} ({list(pipe.names)})"
            )
        out.append(_Service(svc, pipe, list(s.stages or pipe.names)))
    return out


def _plan(s: AllocatorSettings, services: list[_Service], cores: int, *, several: bool) -> int:
    """Print how ``cores`` consumers would be split from the recorded history: across the
    services by the budget rule (each sized for the highest ingest rate its history saw), then
    within each service the planner's split of its share against the proportional split, and
    the throughput each would reach. ``several``: the config declares several services (each
    has its own history directory)."""
    u = s.scaling.target_utilisation
    found: dict[str, tuple[History, int, dict[str, Curve]]] = {}
    missing = False
    for svc in services:
        history = _history(s, svc.name, several=several)
        samples = history.samples(in_flight_s=s.scaling.in_flight_s)
        by_stage = curves(samples, up_to=cores)
        lacking = [st for st in svc.stages if st not in by_stage]
        if lacking:
            print(
                f"allocator: no backlogged looks recorded for {', '.join(lacking)} in "
                f"{history.directory}; run the allocator through a busy period first",
                file=sys.stderr,
            )
            missing = True
            continue
        found[svc.name] = (history, len(samples), {st: by_stage[st] for st in svc.stages})
    if missing:
        return 2
    asks = []
    for svc in services:
        history, _, stages = found[svc.name]
        peak = history.peak(svc.stages[0])
        asks.append(
            ServiceAsk(
                svc.name,
                svc.settings.priority,
                tuple(
                    StageAsk(st, _consumers_for(stages[st], peak, u, cores), 0, stages[st][1])
                    for st in svc.stages
                ),
                peak,
            )
        )
    split = split_budget(asks, cores, utilisation=u)
    for svc, ask in zip(services, asks, strict=True):
        history, n_samples, stages = found[svc.name]
        grant = split.of(svc.name)
        share = grant.consumers
        if len(services) > 1:
            print(
                f"== {svc.name} (priority {svc.settings.priority}): {share} of {cores} cores, "
                f"needs {sum(grant.need.values())} for its peak {ask.offered_rate:,.0f} req/s "
                f"({grant.reason})"
            )
        print(f"history: {n_samples} backlogged looks in {history.directory}")
        if share < len(svc.stages):
            print(f"every stage needs a consumer: {svc.name} is shed entirely with {share}")
            continue
        best = plan_split(stages, share)
        prop = evaluate(proportional_split({st: c[1] for st, c in stages.items()}, share), stages)
        print(f"{'stage':<10} {'planned':>8} {'proportional':>13}   one-consumer events/s")
        for st in svc.stages:
            print(
                f"{st:<10} {best.consumers[st]:>8} {prop.consumers[st]:>13}   {stages[st][1]:,.0f}"
            )
        ratio = best.throughput / prop.throughput if prop.throughput else math.inf
        print(
            f"throughput: planned {best.throughput:,.0f}/s, proportional {prop.throughput:,.0f}/s "
            f"({ratio:.2f}x)"
        )
        if len(services) > 1 and best.within_target(u) < ask.offered_rate:
            print(
                f"admission: {best.within_target(u):,.0f} req/s of its peak "
                f"{ask.offered_rate:,.0f} (the rest shed at {svc.stages[0]})"
            )
    return 0


def _consumers_for(curve: Curve, rate: float, utilisation: float, cap: int) -> int:
    """The fewest consumers whose capacity at ``utilisation`` covers ``rate`` (at most ``cap``)."""
    for n in range(1, cap + 1):
        if curve[min(n, len(curve) - 1)] * utilisation >= rate:
            return n
    return cap


def _run(args: argparse.Namespace) -> int:
    s = load(args.allocator_config)
    settings = load_settings(args.config).named(args.pipeline)
    services = _services(s, settings, args.pipeline)
    if args.budget is not None and args.budget < 0:
        raise AllocatorConfigError(f"--budget: {args.budget} < 0")
    # With several services declared, each keeps its own logs and history under the given
    # directories (whether or not --pipeline picks one), so they never mix.
    several = len(settings.services) > 1
    if args.plan is not None:
        return _plan(s, services, args.plan, several=several)
    if not args.bootstrap:
        print("allocator: --bootstrap is required (except with --plan)", file=sys.stderr)
        return 2
    if len(services) > 1 and s.actuator != "local":
        raise AllocatorConfigError(
            f"actuator = {s.actuator!r} sizes one service's stages; with "
            f"{[x.name for x in services]} declared, pick one with --pipeline"
        )
    kafka = msgspec.structs.replace(settings.kafka, bootstrap=args.bootstrap)
    conf: dict[str, Any] = dict(kafka.client_conf())
    require_broker(conf, timeout_s=kafka.connect_timeout_s)
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    if port:
        print(f"metrics: {serve_metrics(port, settings.metrics_addr)}", file=sys.stderr)
    members: list[Service] = []
    actuators: list[tuple[LocalActuator | ComposeActuator | KubernetesActuator, list[str]]] = []
    plans_of: list[tuple[PlanPublisher, list[str]]] = []
    for svc in services:
        one = msgspec.structs.replace(s, stages=svc.stages)
        reconciler, actuator, plans = _reconciler(
            one, svc, args, conf, replication=kafka.replication, several=several
        )
        members.append(Service(reconciler, svc.settings.priority))
        actuators.append((actuator, svc.stages))
        if plans is not None:
            plans_of.append((plans, svc.stages))
    fleet = Fleet(members, budget=args.budget, utilisation=s.scaling.target_utilisation)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def show(look: FleetLook) -> None:
        for name, one in look.looks.items():
            tag = f"[{name}] " if len(services) > 1 or args.budget is not None else ""
            if one.error:
                print(f"allocator: {tag}look failed: {one.error}", file=sys.stderr, flush=True)
                continue
            d = one.decisions
            parts = [
                f"{x.name}={one.actual.get(x.name, 0)}->{x.consumers.desired}({x.consumers.reason})"
                for x in (d.stages if d else ())
            ]
            if one.budget is not None:
                parts.append(f"budget={one.budget.reason}")
            if one.admission > 0:
                parts.append(f"admission={one.admission:.3g}/s")
            did = f" acted {' '.join(one.acted)}" if one.acted else ""
            print(f"allocator: {tag}{' '.join(parts)}{did}", flush=True)
        print(f"allocator: next in {look.requeue_after:.0f}s", flush=True)

    try:
        if args.once:
            show(fleet.reconcile())
        else:
            fleet.run(stop.is_set, on_look=show)
    finally:
        if not args.keep_workers:
            for actuator, _ in actuators:
                if isinstance(actuator, LocalActuator):
                    actuator.close()  # compose replicas outlive the allocator, as compose's own do
            if not args.dry_run:
                for plans, stages in plans_of:
                    _withdraw(plans, stages)
    return 0


def _reconciler(
    s: AllocatorSettings,
    svc: _Service,
    args: argparse.Namespace,
    conf: dict[str, Any],
    *,
    replication: int,
    several: bool,
) -> tuple[Reconciler, LocalActuator | ComposeActuator | KubernetesActuator, PlanPublisher | None]:
    """One service's reconcile loop (its topics, control topic, actuator, history)."""
    p, pipe = svc.name, svc.pipeline
    topics = {st: (input_topic(pipe, st), group_id(p, st)) for st in s.stages}
    control = ensure_control_topic(conf, p, replication=replication)
    actuator = _actuator(s, args, p, several=several)
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
        deadline_s=svc.settings.default_timeout_ms / 1000.0,
        grow_partitions=(lambda st, n: grow_topic(conf, input_topic(pipe, st), n))
        if s.grow_partitions
        else None,
        publish_admission=AdmissionPublisher(conf, control) if s.shedding else None,
        plans=plans,
        instances=actuator.instances if isinstance(actuator, LocalActuator) else None,
        history=_history(s, p, several=several) if s.history else None,
        dry_run=args.dry_run,
        interval_s=s.interval_s,
    )
    return reconciler, actuator, plans


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
    p.add_argument(
        "--pipeline",
        default=None,
        help="size only this service (default: every pipeline --config declares)",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        metavar="CORES",
        help="consumers (worker processes, about a core each) shared by every service; when "
        "short, the higher priority is sized first and the lower shed at its ingest "
        "(default: unlimited)",
    )
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
        help="print how CORES consumers split across the services (by priority) and each one's "
        "stages from the recorded history (and the proportional split), then exit; needs no "
        "broker",
    )
    p.set_defaults(func=_run)
