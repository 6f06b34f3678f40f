"""Runs one stage: pull a micro-batch, drop what expired, process, route every result.

Routing is uniform for every stage: dead letters to the dead-letter sink (plus an ``invalid``
answer when the request id is known, so the client never waits for silence); events with a
terminal status (expired, shed) straight to the answers; the rest forward, or to the answers after
the last stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from stages import metrics
from stages.codec import CodecError, to_response
from stages.errors import StageContractError
from stages.events import TERMINAL, DeadLetter, Event, Response
from stages.runtime.channel import Envelope, Sink, Source
from stages.stage import Stage

log = logging.getLogger(__name__)

DEPTH_SAMPLE_S = 0.1
"""How often a runner samples its source's depth for the queue-depth gauge."""


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """A micro-batch closes at ``max_size`` events or ``max_wait_ms`` after its first event.

    ``max_candidates`` bounds the work of one ``process`` call: a stage's cost grows with the
    candidates of the batch, not its requests, so one request with 10,000 candidates among 63 of
    200 would nearly double everyone's wait. A batch over the bound is processed in parts, short
    requests first (order per user kept), each part routed before the next starts; a request over
    the bound goes alone. Taking a batch from the source is unchanged (the candidates are unknown
    until decoded).
    """

    max_size: int = 64
    max_wait_ms: float = 2.0
    max_candidates: int = 16_384


@dataclass(slots=True)
class Routes:
    """Where a runner's results go; ``forward`` is None for the pipeline's last stage."""

    forward: Sink | None
    answers: Sink
    dead: Sink


class StageRunner:
    """One thread per stage; numpy releases the GIL, so stages of one process overlap."""

    def __init__(
        self,
        stage: Stage[Any],
        source: Source,
        routes: Routes,
        *,
        pipeline: str,
        policy: BatchPolicy = BatchPolicy(),
        takes_events: bool = True,
        decode: Callable[[Any], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stage = stage
        self._decode = decode
        self.source = source
        self.routes = routes
        self.policy = policy
        self.pipeline = pipeline
        self._takes_events = takes_events
        self._clock = clock
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.processed = 0
        name = stage.name
        self._m_events = {
            o: metrics.EVENTS.labels(pipeline, name, o)
            for o in ("ok", "expired", "shed", "invalid", "duplicate", "dead_letter")
        }
        self._m_batch = metrics.BATCH_SIZE.labels(pipeline, name)
        self._m_time = metrics.PROCESSING.labels(pipeline, name)
        self._m_latency = metrics.STAGE_LATENCY.labels(pipeline, name)
        self._m_depth = metrics.QUEUE_DEPTH.labels(pipeline, name)
        # The edge stage (the one fed raw requests) records the budgets it admitted.
        self._m_budget = None if takes_events else metrics.DEADLINE_BUDGET.labels(pipeline)
        self._m_requests = None if takes_events else metrics.REQUESTS.labels(pipeline)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"stage-{self.stage.name}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self.stage.open()
            try:
                wait = self.policy.max_wait_ms / 1000.0
                sampled = 0.0
                while (batch := self.source.get_batch(self.policy.max_size, wait)) is not None:
                    # A gauge scraped every few seconds: sampling it at 10 Hz is plenty, and a
                    # Kafka source's depth (its unfinished offsets) costs a scan to compute.
                    now = time.monotonic()
                    if now - sampled >= DEPTH_SAMPLE_S:
                        self._m_depth.set(self.source.depth())
                        sampled = now
                    self.handle(batch)
            finally:
                self.stage.close()
        except BaseException as exc:
            self.error = exc
            log.exception("stage %s stopped", self.stage.name)
            # Unblock whoever feeds us: their next put fails instead of waiting forever.
            self.source.close()
        finally:
            if self.routes.forward is not None:
                self.routes.forward.close()

    def _decode_all(self, batch: list[Envelope]) -> tuple[list[Envelope], list[Envelope]]:
        """Wire bytes to events; an undecodable message becomes a dead letter, not an exception.
        Decoded envelopes keep the raw bytes beside them so later dead letters can carry them."""
        assert self._decode is not None
        ok: list[Envelope] = []
        bad: list[Envelope] = []
        for env in batch:
            try:
                ok.append(Envelope(self._decode(env.value), _RawTicket(env.ticket, env.value)))
            except (CodecError, ValueError) as exc:
                payload = env.value if isinstance(env.value, bytes) else b""
                letter = DeadLetter(
                    stage=self.stage.name, reason=f"undecodable event: {exc}", payload=payload
                )
                bad.append(Envelope(letter, env.ticket))
        return ok, bad

    def handle(self, batch: Sequence[Envelope]) -> None:
        """Process one micro-batch synchronously (also the entry point for tests)."""
        live: list[Envelope] = list(batch)
        if self._decode is not None:
            live, undecodable = self._decode_all(live)
            if undecodable:
                self._m_events["dead_letter"].inc(len(undecodable))
                self.routes.dead.put_many(undecodable)
        self.processed += len(batch)
        if self._m_requests is not None:
            self._m_requests.inc(len(batch))
        if not self._takes_events:
            self._handle_part(live)
            return
        for part in _parts(live, self.policy.max_candidates):
            self._handle_part(part)

    def _handle_part(self, live: list[Envelope]) -> None:
        """Drop what expired, process the rest, route every result. Each part of an oversized
        batch is routed before the next is processed, so its requests need not wait for them."""
        name = self.stage.name
        now_ms = self._clock() * 1000.0
        answers: list[Envelope] = []
        if self._takes_events and live:
            deadlines = np.fromiter((env.value.deadline_ms for env in live), np.float64, len(live))
            expired = deadlines <= now_ms
            if expired.any():
                reason = f"deadline passed before {name}"
                for env, gone in zip(live, expired.tolist(), strict=True):
                    if gone:
                        ev = msgspec.structs.replace(env.value, status="expired", reason=reason)
                        answers.append(Envelope(ev, env.ticket))
                live = [env for env, gone in zip(live, expired.tolist(), strict=True) if not gone]

        results: Sequence[Event | DeadLetter] = []
        if live:
            t0 = time.perf_counter()
            results = self.stage.process([env.value for env in live])
            self._m_time.observe(time.perf_counter() - t0)
            self._m_batch.observe(len(live))
            if len(results) != len(live):
                raise StageContractError(
                    f"stage {name!r} returned {len(results)} results for {len(live)} inputs"
                )

        done_ms = self._clock() * 1000.0
        forward: list[Envelope] = []
        dead: list[Envelope] = []
        invalid: list[Envelope] = []
        created: list[float] = []
        for env, res in zip(live, results, strict=True):
            if isinstance(res, DeadLetter):
                letter = res
                if not letter.payload and isinstance(env.ticket, _RawTicket):
                    letter = msgspec.structs.replace(letter, payload=env.ticket.raw)
                dead.append(Envelope(letter, env.ticket))
                if letter.request_id:
                    invalid.append(Envelope(_invalid_response(letter, done_ms), None))
                continue
            stamped = msgspec.structs.replace(res, stamps={**res.stamps, name: done_ms})
            created.append(stamped.created_at_ms)
            if stamped.status in TERMINAL or self.routes.forward is None:
                answers.append(Envelope(stamped, env.ticket))
            else:
                forward.append(Envelope(stamped, env.ticket))

        if created:
            self._m_latency.observe_many((done_ms - np.asarray(created)) / 1000.0)
        if self._m_budget is not None and forward:
            budgets = [env.value.deadline_ms - env.value.created_at_ms for env in forward]
            self._m_budget.observe_many(np.asarray(budgets) / 1000.0)
        if dead:
            self._m_events["dead_letter"].inc(len(dead))
        if forward:
            self._m_events["ok"].inc(len(forward))
        if answers:
            for status, n in Counter(env.value.status for env in answers).items():
                self._m_events[status].inc(n)

        if dead:
            self.routes.dead.put_many(dead)
        if forward:
            assert self.routes.forward is not None
            self.routes.forward.put_many(forward)
        if answers or invalid:
            responses = [Envelope(to_response(env.value, done_ms), env.ticket) for env in answers]
            responses.extend(invalid)
            _count_responses(self.pipeline, [env.value for env in responses])
            self.routes.answers.put_many(responses)


def _parts(batch: list[Envelope], max_candidates: int) -> list[list[Envelope]]:
    """``batch`` cut into parts of at most ``max_candidates`` candidates (a request over the
    bound by itself forms its own part), smallest first: users go in the order of their largest
    request in the batch, so short requests are not held behind a long one, and each user's
    requests keep their order."""
    counts = [len(env.value.candidates) for env in batch]
    if sum(counts) <= max_candidates:
        return [batch]
    largest: dict[int, int] = {}
    for env, n in zip(batch, counts, strict=True):
        uid = env.value.user_id
        largest[uid] = max(largest.get(uid, 0), n)
    order = sorted(range(len(batch)), key=lambda i: largest[batch[i].value.user_id])
    parts: list[list[Envelope]] = []
    part: list[Envelope] = []
    total = 0
    for i in order:
        if part and total + counts[i] > max_candidates:
            parts.append(part)
            part, total = [], 0
        part.append(batch[i])
        total += counts[i]
    parts.append(part)
    return parts


class _RawTicket:
    """Wraps an input's ticket while keeping the input's wire bytes for dead letters."""

    __slots__ = ("raw", "ticket")

    def __init__(self, ticket: Any, raw: bytes) -> None:
        self.ticket = ticket
        self.raw = raw

    def done(self) -> None:
        if self.ticket is not None:
            self.ticket.done()


def _invalid_response(letter: DeadLetter, now_ms: float) -> Response:
    return Response(
        request_id=letter.request_id,
        user_id=letter.user_id,
        status="invalid",
        items=[],
        scores=[],
        latency_ms=0.0,
        created_at_ms=now_ms,
        answered_at_ms=now_ms,
        stage_ms={},
        reason=letter.reason,
    )


def _count_responses(pipeline: str, responses: Sequence[Response]) -> None:
    by_status: dict[str, list[float]] = {}
    for r in responses:
        by_status.setdefault(r.status, []).append(r.latency_ms)
    for status, lat in by_status.items():
        metrics.RESPONSES.labels(pipeline, status).inc(len(lat))
        metrics.REQUEST_LATENCY.labels(pipeline, status).observe_many(np.asarray(lat) / 1000.0)
