"""`jizhi worker`: some stages of the pipeline in one process, between Kafka topics.

Consecutive stages given to one worker form a chain joined in memory; each chain's first stage is
a consumer group (``jizhi.<pipeline>.<stage>``) on its input topic, and its last stage produces to
the next stage's topic (or, for ``rank``, to the responses). Non-consecutive stages make several
chains in the same process. With ``kafka.exactly_once`` each chain instead runs one synchronous
transactional loop (see `stages.runtime.kafka.TransactionalChain`).
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
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from jizhi.assemble import batch_policies, build_stages, open_store
from jizhi.client import ensure_pipeline_topics, pipeline_topics
from jizhi.config import STAGE_ORDER, ConfigError, Settings, jizhi_home, load_settings
from jizhi.synth import World, WorldSpec, ensure_world
from jizhi.world_args import add_world_args, world_spec
from stages import metrics
from stages.admission import Admission
from stages.codec import EventCodec
from stages.events import DeadLetter, Event, Response
from stages.model import RankingModel
from stages.runtime import BatchPolicy, Chain
from stages.runtime.kafka import (
    ChainOutputs,
    ControlFollower,
    Headers,
    KafkaSink,
    KafkaSource,
    Output,
    PlanControl,
    SharedProducer,
    TransactionalChain,
    ensure_control_topic,
    group_id,
    topic_name,
)
from stages.stage import Stage
from storage import TieredStore

log = logging.getLogger(__name__)

__all__ = ["KafkaWorker", "pipeline_topics", "register", "split_chains"]

MAX_REASON_BYTES = 4096


def split_chains(names: Sequence[str]) -> list[list[str]]:
    """Group stage names into runs of consecutive pipeline stages, in pipeline order."""
    unknown = [n for n in names if n not in STAGE_ORDER]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {list(STAGE_ORDER)}")
    ordered = sorted(set(names), key=STAGE_ORDER.index)
    chains: list[list[str]] = []
    for name in ordered:
        if chains and STAGE_ORDER.index(name) == STAGE_ORDER.index(chains[-1][-1]) + 1:
            chains[-1].append(name)
        else:
            chains.append([name])
    return chains


class _Encoders:
    """Wire encoders for each output kind; per thread, because runners share the sinks."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _codec(self) -> EventCodec:
        codec: EventCodec | None = getattr(self._local, "codec", None)
        if codec is None:
            codec = self._local.codec = EventCodec()
        return codec

    def event(self, ev: Event) -> tuple[bytes | None, bytes, None]:
        return str(ev.user_id).encode(), self._codec().encode(ev), None

    def response(self, r: Response) -> tuple[bytes | None, bytes, None]:
        return str(r.user_id).encode(), msgspec.json.encode(r), None

    def dead(self, d: DeadLetter) -> tuple[bytes | None, bytes, Headers]:
        headers: Headers = [
            ("jizhi.reason", d.reason.encode()[:MAX_REASON_BYTES]),
            ("jizhi.stage", d.stage.encode()),
        ]
        if d.request_id:
            headers.append(("jizhi.request_id", d.request_id.encode()))
        return (d.request_id.encode() or None), d.payload, headers


class KafkaWorker:
    """Runs ``stages`` until stopped; ``stop`` drains in-flight events, flushes and commits.

    ``instance`` names this worker stably across restarts: it becomes the consumers'
    ``group.instance.id`` (static membership: a restarted worker takes its partitions back at
    once, while a stopped one keeps them until ``session.timeout.ms``) and, with exactly-once,
    part of the ``transactional.id`` (a restarted worker aborts its predecessor's open
    transaction instead of leaving readers blocked until ``transaction.timeout.ms``), and it is
    the name the allocator's assignment plans use.

    The worker follows the allocator's control topic ``jizhi.<pipeline>.control`` (read from the
    beginning before its consumers start, then in a daemon thread): the admission rate goes to
    ingest's `Admission` (and the ``jizhi_ingest_admission_rate`` gauge); an assignment plan
    for a chain's first stage makes that chain's source leave the consumer group and follow the
    plan (not with exactly-once, whose chains stay group members). ``follow_control=False``
    ignores the topic.
    """

    def __init__(
        self,
        settings: Settings,
        stages: Sequence[str],
        *,
        store: TieredStore | None,
        model: RankingModel | None,
        admission: Admission | None = None,
        client_id: str = "jizhi-worker",
        instance: str | None = None,
        follow_control: bool = True,
    ) -> None:
        self.settings = settings
        self.chains_names = split_chains(stages)
        k = settings.kafka
        p = settings.pipeline.name
        conf: dict[str, Any] = {**k.client_conf(), "client.id": client_id}
        ensure_pipeline_topics(conf, p, partitions=k.partitions, replication=k.replication)
        policies = batch_policies(settings)
        enc = _Encoders()
        answers = Output(topic_name(p, "responses"), enc.response)
        dead = Output(topic_name(p, "dead"), enc.dead)
        self.exactly_once = k.exactly_once
        self.producer: SharedProducer | None = None
        self.sources: list[KafkaSource] = []
        self.chains: list[Chain] = []
        self.transactional: list[TransactionalChain] = []
        decoder = EventCodec()
        tag = instance or uuid.uuid4().hex[:12]
        if admission is None and "ingest" in stages:
            pp = settings.pipeline
            admission = Admission(
                rate=pp.admission_rate, min_budget_ms=pp.min_budget_ms, clock=time.time
            )
        self.admission = admission
        self.control: ControlFollower | None = None
        if follow_control:
            self.control = ControlFollower(
                conf,
                ensure_control_topic(conf, p, replication=k.replication),
                on_admission=self._on_admission,
            )
            if not self.control.catch_up():
                log.warning("control topic of %s not read to its end; following it anyway", p)
        if admission is not None:
            metrics.SHED_LEVEL.labels(p).set(admission.rate)
        if not self.exactly_once:
            self.producer = SharedProducer(conf, pipeline=p)
        for names in self.chains_names:
            first, last = names[0], names[-1]
            nxt = STAGE_ORDER.index(last) + 1
            forward = (
                Output(topic_name(p, STAGE_ORDER[nxt]), enc.event)
                if nxt < len(STAGE_ORDER)
                else None
            )
            consumer_conf = {**conf, "group.id": group_id(p, first)}
            if instance:
                consumer_conf["group.instance.id"] = instance
            if self.exactly_once:
                self.transactional.append(
                    TransactionalChain(
                        _stage_factory(settings, names, store, model, admission),
                        topic_name(p, first),
                        consumer_conf=consumer_conf,
                        producer_conf={
                            **conf,
                            "transactional.id": f"jizhi.{p}.{first}-{last}.{tag}",
                        },
                        outputs=ChainOutputs(forward=forward, answers=answers, dead=dead),
                        pipeline=p,
                        stage=first,
                        policy=policies.get(first, BatchPolicy()),
                        first_takes_events=first != "ingest",
                        decode_first=None if first == "ingest" else decoder.decode,
                    )
                )
                continue
            assert self.producer is not None
            source = KafkaSource(
                consumer_conf,
                topic_name(p, first),
                pipeline=p,
                stage=first,
                control=None
                if self.control is None
                else PlanControl(self.control, stage=first, instance=tag, group=group_id(p, first)),
            )
            built = build_stages(settings, names, store=store, model=model, admission=admission)
            chain = Chain(
                built,
                source,
                forward=None
                if forward is None
                else KafkaSink(self.producer, forward.topic, forward.encode),
                answers=KafkaSink(self.producer, answers.topic, answers.encode),
                dead=KafkaSink(self.producer, dead.topic, dead.encode),
                pipeline=p,
                policies=policies,
                queue_capacity=settings.pipeline.queue_capacity,
                first_takes_events=first != "ingest",
                decode_first=None if first == "ingest" else decoder.decode,
                threads=settings.pipeline.threads,
            )
            self.sources.append(source)
            self.chains.append(chain)
        self._stopped = threading.Event()

    def _on_admission(self, rate: float | None) -> None:
        """A new admission record (None: deleted, back to the configured rate)."""
        if self.admission is None:
            return
        limit = self.settings.pipeline.admission_rate if rate is None else rate
        self.admission.set_rate(limit)
        metrics.SHED_LEVEL.labels(self.settings.pipeline.name).set(self.admission.rate)
        log.info("admission rate -> %.1f req/s", self.admission.rate)

    def start(self) -> None:
        if self.control is not None:
            self.control.start()
        for chain in self.chains:
            chain.start()
        for txn in self.transactional:
            txn.start()

    def assignments(self) -> dict[str, list[int]]:
        """Partitions each chain's consumer owns now, by first stage."""
        owners: list[KafkaSource | TransactionalChain] = [*self.sources, *self.transactional]
        return {
            names[0]: sorted(o.assigned) for names, o in zip(self.chains_names, owners, strict=True)
        }

    def _finished(self) -> bool:
        return all(c.join(0) for c in self.chains) and all(t.join(0) for t in self.transactional)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop fetching, finish in-flight batches, flush outputs, commit, leave the group."""
        if self._stopped.is_set():
            return True
        self._stopped.set()
        end = time.monotonic() + timeout
        for source in self.sources:
            source.close()
        for txn in self.transactional:
            txn.close()
        drained = all(chain.join(max(0.0, end - time.monotonic())) for chain in self.chains)
        drained = (
            all(t.join(max(0.0, end - time.monotonic())) for t in self.transactional) and drained
        )
        left = 0
        if self.producer is not None:
            left = self.producer.flush(max(1.0, end - time.monotonic()))
        for source in self.sources:
            source.finish(max(1.0, end - time.monotonic()))
        if self.producer is not None:
            self.producer.close(1.0)
        if self.control is not None:
            self.control.close()
        if left:
            log.warning("%d outputs undelivered at shutdown; their inputs stay uncommitted", left)
        return drained and not left

    @property
    def error(self) -> BaseException | None:
        for chain in self.chains:
            if chain.error is not None:
                return chain.error
        for txn in self.transactional:
            if txn.error is not None:
                return txn.error
        return None

    def run_until_signalled(self, out: Any = sys.stderr) -> int:
        """Serve until SIGTERM/SIGINT (or a stage fails); then drain and exit."""
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        shown: dict[str, list[int]] = {}
        print(f"jizhi worker {os.getpid()}: running {self.chains_names}", file=out, flush=True)
        while not stop.wait(0.1):
            now = self.assignments()
            if now != shown:
                print(f"jizhi worker {os.getpid()}: assigned {now}", file=out, flush=True)
                shown = now
            if self.error is not None or self._finished():
                break
        print(f"jizhi worker {os.getpid()}: draining", file=out, flush=True)
        clean = self.stop()
        if self.error is not None:
            print(f"error: a stage stopped: {self.error!r}", file=out, flush=True)
            return 1
        print(
            f"jizhi worker {os.getpid()}: stopped {'cleanly' if clean else 'with leftovers'}",
            file=out,
            flush=True,
        )
        return 0 if clean else 3


def _stage_factory(
    settings: Settings,
    names: list[str],
    store: TieredStore | None,
    model: RankingModel | None,
    admission: Admission | None,
) -> Any:
    def make() -> list[Stage[Any]]:
        return build_stages(settings, names, store=store, model=model, admission=admission)

    return make


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
    pipeline = settings.pipeline
    if args.pipeline is not None:
        pipeline = msgspec.structs.replace(pipeline, name=args.pipeline)
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


def _run(args: argparse.Namespace) -> int:
    from jizhi.metrics_server import serve_metrics  # noqa: PLC0415 - CLI path only

    settings = _settings_from(args)
    names = [n.strip() for n in args.stages.split(",") if n.strip()]
    split_chains(names)  # names the unknown ones before any data is generated
    store: TieredStore | None = None
    model: RankingModel | None = None
    needs_store = any(n in ("features", "embed") for n in names)
    needs_model = "score" in names
    if needs_store or needs_model:
        world: World | None = None
        if not (settings.store.path and (settings.model.path or not needs_model)):
            world = _locked_world(world_spec(args, settings.pipeline.context_dim), args.world_dir)
        if needs_store:
            path = Path(settings.store.path) if settings.store.path else world.store_path  # type: ignore[union-attr]
            store = open_store(settings, path)
        if needs_model:
            mpath = Path(settings.model.path) if settings.model.path else world.model_path  # type: ignore[union-attr]
            model = RankingModel.load(mpath)
    if settings.metrics_port:
        print(
            f"metrics: {serve_metrics(settings.metrics_port, settings.metrics_addr)}",
            file=sys.stderr,
        )
    p = settings.pipeline.name
    worker = KafkaWorker(
        settings,
        names,
        store=store,
        model=model,
        client_id=f"jizhi-{p}-{'-'.join(names)}-{os.getpid()}",
        instance=args.instance,
    )
    try:
        return worker.run_until_signalled()
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "worker",
        help="run some stages of a pipeline as Kafka consumer groups",
        description="Run the given stages between Kafka topics until SIGTERM/SIGINT, then drain, "
        "flush, commit and exit. Consecutive stages share memory; each chain's first stage is "
        "the consumer group jizhi.<pipeline>.<stage>.",
    )
    p.add_argument("--stages", required=True, help="comma-separated, e.g. embed,score")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers HOST:PORT")
    p.add_argument("--config", type=Path, default=None, help="TOML settings file")
    p.add_argument("--pipeline", default=None, help="pipeline name (demo)")
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
