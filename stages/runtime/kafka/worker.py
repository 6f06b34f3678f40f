"""A worker: runs of some pipelines' stages in one process, between Kafka topics.

Consecutive stages given to one worker form a chain joined in memory; each chain's first stage is
a consumer group (``jizhi.<pipeline>.<stage>``) on its input topic, and its last stage produces to
the next stage's topic (or, after the pipeline's last stage, to the responses). Stages of several
pipelines may share one worker: each pipeline keeps its own topics, groups, control topic and
admission, and the worker's one producer only carries what each chain addresses to its own
pipeline's topics, so no answer can cross services. With exactly-once each chain instead runs one
synchronous transactional loop (see `TransactionalChain`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from stages import metrics
from stages.codec import EventCodec
from stages.context import StageContext
from stages.events import DeadLetter, Event, Response
from stages.pipeline import Pipeline
from stages.runtime.chain import Chain, Threads
from stages.runtime.kafka.control import ControlFollower, PlanControl, ensure_control_topic
from stages.runtime.kafka.producer import Headers, KafkaSink, SharedProducer
from stages.runtime.kafka.source import KafkaSource
from stages.runtime.kafka.topics import (
    ensure_pipeline_topics,
    group_id,
    input_topic,
    output_topic,
    topic_name,
)
from stages.runtime.kafka.transactional import ChainOutputs, Output, TransactionalChain
from stages.runtime.runner import BatchPolicy
from stages.stage import Stage

log = logging.getLogger(__name__)

MAX_REASON_BYTES = 4096


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
        key = None if r.user_id is None else str(r.user_id).encode()
        return key, msgspec.json.encode(r), None

    def dead(self, d: DeadLetter) -> tuple[bytes | None, bytes, Headers]:
        headers: Headers = [
            ("jizhi.reason", d.reason.encode()[:MAX_REASON_BYTES]),
            ("jizhi.stage", d.stage.encode()),
        ]
        if d.request_id:
            headers.append(("jizhi.request_id", d.request_id.encode()))
        return (d.request_id.encode() or None), d.payload, headers


@dataclass(frozen=True, kw_only=True)
class Deployment:
    """What one worker runs of one pipeline: ``stages`` (in the pipeline's order; gaps make
    several chains), built from ``context``, micro-batched by ``policies``."""

    pipeline: Pipeline
    stages: Sequence[str]
    context: StageContext
    policies: Mapping[str, BatchPolicy] = field(default_factory=dict)
    queue_capacity: int = 1024
    threads: Threads = "one"

    @property
    def chains(self) -> list[list[str]]:
        return self.pipeline.chains(self.stages)


@dataclass(frozen=True, kw_only=True)
class KafkaOptions:
    """The cluster and the shape of the topics a worker creates when they are missing."""

    conf: Mapping[str, Any]
    partitions: int = 6
    replication: int = 1
    exactly_once: bool = False


@dataclass(slots=True)
class _Hosted:
    """One chain of one pipeline, and what owns its partitions."""

    pipeline: str
    names: list[str]
    owner: KafkaSource | TransactionalChain
    chain: Chain | None = None


class KafkaWorker:
    """Runs the deployments until stopped; ``stop`` drains in-flight events, flushes, commits.

    ``instance`` names this worker stably across restarts: it becomes the consumers'
    ``group.instance.id`` (static membership: a restarted worker takes its partitions back at
    once, while a stopped one keeps them until ``session.timeout.ms``) and, with exactly-once,
    part of the ``transactional.id`` (a restarted worker aborts its predecessor's open
    transaction instead of leaving readers blocked until ``transaction.timeout.ms``), and it is
    the name the allocator's assignment plans use.

    For each pipeline the worker follows the allocator's control topic
    ``jizhi.<pipeline>.control`` (read from the beginning before its consumers start, then in a
    daemon thread): the admission rate goes to that pipeline's `Admission` (and the
    ``jizhi_ingest_admission_rate`` gauge); an assignment plan for a chain's first stage makes
    that chain's source leave the consumer group and follow the plan (not with exactly-once,
    whose chains stay group members). ``follow_control=False`` ignores the topics.
    """

    def __init__(
        self,
        deployments: Sequence[Deployment],
        kafka: KafkaOptions,
        *,
        client_id: str = "jizhi-worker",
        instance: str | None = None,
        follow_control: bool = True,
    ) -> None:
        if not deployments:
            raise ValueError("a worker needs at least one deployment")
        names = [d.pipeline.name for d in deployments]
        if len(set(names)) != len(names):
            raise ValueError(f"pipelines deployed twice in one worker: {names}")
        self.deployments = list(deployments)
        self.exactly_once = kafka.exactly_once
        conf: dict[str, Any] = {**kafka.conf, "client.id": client_id}
        self._conf = conf
        self._tag = instance or uuid.uuid4().hex[:12]
        self._instance = instance
        self.producer: SharedProducer | None = None
        self.hosted: list[_Hosted] = []
        self.controls: list[ControlFollower] = []
        for d in deployments:
            d.pipeline.chains(d.stages)  # refuse a bad selection before touching the cluster
        if not self.exactly_once:
            self.producer = SharedProducer(conf, pipeline=deployments[0].pipeline.name)
        enc = _Encoders()
        for d in deployments:
            ensure_pipeline_topics(
                conf, d.pipeline, partitions=kafka.partitions, replication=kafka.replication
            )
            control = self._follow(d, kafka.replication) if follow_control else None
            for run in d.chains:
                self.hosted.append(self._chain(d, run, enc, control))
        self._stopped = threading.Event()

    # -- building --------------------------------------------------------------------------------

    def _follow(self, d: Deployment, replication: int) -> ControlFollower:
        p = d.pipeline.name
        admission = d.context.admission

        def on_admission(rate: float | None) -> None:
            """A new admission record (None: deleted, back to the configured rate)."""
            if admission is None:
                return
            admission.set_rate(d.context.admission_rate if rate is None else rate)
            metrics.SHED_LEVEL.labels(p).set(admission.rate)
            log.info("%s: admission rate -> %.1f req/s", p, admission.rate)

        control = ControlFollower(
            self._conf,
            ensure_control_topic(self._conf, p, replication=replication),
            on_admission=on_admission,
        )
        if not control.catch_up():
            log.warning("control topic of %s not read to its end; following it anyway", p)
        if admission is not None and d.pipeline.edge in d.stages:
            metrics.SHED_LEVEL.labels(p).set(admission.rate)
        self.controls.append(control)
        return control

    def _chain(
        self, d: Deployment, names: list[str], enc: _Encoders, control: ControlFollower | None
    ) -> _Hosted:
        pipe = d.pipeline
        p = pipe.name
        first, last = names[0], names[-1]
        edge = pipe.spec(first).takes == "requests"
        forward = (
            Output(output_topic(pipe, last), enc.event) if pipe.after(last) is not None else None
        )
        answers = Output(topic_name(p, "responses"), enc.response)
        dead = Output(topic_name(p, "dead"), enc.dead)
        consumer_conf = {**self._conf, "group.id": group_id(p, first)}
        if self._instance:
            consumer_conf["group.instance.id"] = self._instance
        decode = None if edge else EventCodec().decode
        policy = d.policies.get(first, BatchPolicy())

        def build() -> list[Stage[Any]]:
            return pipe.build(names, d.context)

        if self.exactly_once:
            txn = TransactionalChain(
                build,
                input_topic(pipe, first),
                consumer_conf=consumer_conf,
                producer_conf={
                    **self._conf,
                    "transactional.id": f"jizhi.{p}.{first}-{last}.{self._tag}",
                },
                outputs=ChainOutputs(forward=forward, answers=answers, dead=dead),
                pipeline=p,
                stage=first,
                policy=policy,
                first_takes_events=not edge,
                decode_first=decode,
            )
            return _Hosted(p, names, txn)
        assert self.producer is not None
        for out in (forward, answers, dead):
            if out is not None:
                self.producer.owns(out.topic, p)
        source = KafkaSource(
            consumer_conf,
            input_topic(pipe, first),
            pipeline=p,
            stage=first,
            control=None
            if control is None
            else PlanControl(control, stage=first, instance=self._tag, group=group_id(p, first)),
        )
        chain = Chain(
            build(),
            source,
            forward=None
            if forward is None
            else KafkaSink(self.producer, forward.topic, forward.encode),
            answers=KafkaSink(self.producer, answers.topic, answers.encode),
            dead=KafkaSink(self.producer, dead.topic, dead.encode),
            pipeline=p,
            policies=d.policies,
            queue_capacity=d.queue_capacity,
            first_takes_events=not edge,
            decode_first=decode,
            threads=d.threads,
        )
        return _Hosted(p, names, source, chain)

    # -- running ---------------------------------------------------------------------------------

    @property
    def chains_names(self) -> list[list[str]]:
        return [h.names for h in self.hosted]

    def describe(self) -> dict[str, list[list[str]]]:
        """The chains this worker runs, by pipeline."""
        out: dict[str, list[list[str]]] = {}
        for h in self.hosted:
            out.setdefault(h.pipeline, []).append(h.names)
        return out

    def start(self) -> None:
        for control in self.controls:
            control.start()
        for h in self.hosted:
            if h.chain is not None:
                h.chain.start()
            elif isinstance(h.owner, TransactionalChain):
                h.owner.start()

    def assignments(self) -> dict[str, list[int]]:
        """Partitions each chain's consumer owns now, by ``pipeline/first stage`` (by first stage
        alone when the worker serves one pipeline)."""
        many = len(self.deployments) > 1
        return {
            (f"{h.pipeline}/{h.names[0]}" if many else h.names[0]): sorted(h.owner.assigned)
            for h in self.hosted
        }

    def _join(self, h: _Hosted, timeout: float) -> bool:
        if h.chain is not None:
            return h.chain.join(timeout)
        assert isinstance(h.owner, TransactionalChain)
        return h.owner.join(timeout)

    def finished(self) -> bool:
        return all(self._join(h, 0) for h in self.hosted)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop fetching, finish in-flight batches, flush outputs, commit, leave the group."""
        if self._stopped.is_set():
            return True
        self._stopped.set()
        end = time.monotonic() + timeout
        for h in self.hosted:
            h.owner.close()
        drained = True
        for h in self.hosted:
            drained = self._join(h, max(0.0, end - time.monotonic())) and drained
        left = 0
        if self.producer is not None:
            left = self.producer.flush(max(1.0, end - time.monotonic()))
        for h in self.hosted:
            if isinstance(h.owner, KafkaSource):
                h.owner.finish(max(1.0, end - time.monotonic()))
        if self.producer is not None:
            self.producer.close(1.0)
        for control in self.controls:
            control.close()
        if left:
            log.warning("%d outputs undelivered at shutdown; their inputs stay uncommitted", left)
        return drained and not left

    @property
    def error(self) -> BaseException | None:
        for h in self.hosted:
            err = h.chain.error if h.chain is not None else h.owner.error  # type: ignore[union-attr]
            if err is not None:
                return err
        return None
