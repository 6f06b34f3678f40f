"""ingest: the edge. Validate, deduplicate, stamp deadlines, and decide admission.

Everything that arrives here is untrusted JSON from any Kafka client, so every failure is a value:
a `DeadLetter` naming the JSON path at fault (and the request id when one can be recovered, so the
client still gets an ``invalid`` answer). The limits are checked before anything is sized from the
input, so a hostile request costs its parse and no more.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from stages.admission import Admission
from stages.codec import CodecError, RequestCodec
from stages.events import MAX_CANDIDATES, SCHEMA_VERSION, DeadLetter, Event, Request, Status
from stages.stage import BaseStage, Result

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)
_F32_MAX = float(np.finfo(np.float32).max)


class Ingest(BaseStage):
    """Turns raw request bytes into events; one output per input, in order.

    A ``request_id`` among the last ``dedupe_window`` admitted ones is an idempotency key used
    again: the repeat is answered at once with status ``duplicate`` (the first copy's answer is the
    answer) rather than served twice or left unanswered; an id answered ``shed`` or ``expired``
    here is not remembered, so re-sending it is a retry. The window lives in this process:
    clients key requests by ``request_id``, so a repeat reaches the same partition and, between
    rebalances, the same ingest.
    """

    name = "ingest"
    takes = "requests"

    def __init__(
        self,
        *,
        default_timeout_ms: float = 200.0,
        max_payload_bytes: int = 1 << 20,
        max_candidates: int = MAX_CANDIDATES,
        max_exclude: int = MAX_CANDIDATES,
        max_context_keys: int = 64,
        max_timeout_ms: float = 3_600_000.0,
        dedupe_window: int = 100_000,
        admission: Admission | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``max_timeout_ms`` bounds how far ahead a deadline may lie (``timeout_ms``, or
        ``deadline_ms`` minus now): a request that claims days of budget would otherwise hold
        memory and never be shed. ``max_candidates`` may lower, not raise, the schema's cap."""
        if not 1 <= max_candidates <= MAX_CANDIDATES:
            raise ValueError(f"max_candidates must be in 1..{MAX_CANDIDATES}, not {max_candidates}")
        self.default_timeout_ms = default_timeout_ms
        self.max_payload_bytes = max_payload_bytes
        self.max_candidates = max_candidates
        self.max_exclude = max_exclude
        self.max_context_keys = max_context_keys
        self.max_timeout_ms = max_timeout_ms
        self.admission = admission or Admission(clock=clock)
        self._clock = clock
        self._codec = RequestCodec()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window

    def process(self, batch: Sequence[bytes], /) -> list[Result]:
        now_ms = self._clock() * 1000.0
        out: list[Result | None] = [None] * len(batch)
        accepted: list[tuple[int, Request]] = []
        taken: set[str] = set()
        for i, raw in enumerate(batch):
            decoded = self._decode(raw, now_ms)
            if isinstance(decoded, DeadLetter):
                out[i] = decoded
            elif decoded.request_id in self._seen or decoded.request_id in taken:
                out[i] = _event(
                    decoded,
                    _deadline(decoded, now_ms, self.default_timeout_ms),
                    now_ms,
                    "duplicate",
                    f"request_id {decoded.request_id!r} was already accepted: "
                    "its first answer is the answer",
                )
            else:
                taken.add(decoded.request_id)
                accepted.append((i, decoded))

        if accepted:
            deadlines = np.array(
                [_deadline(r, now_ms, self.default_timeout_ms) for _, r in accepted],
                dtype=np.float64,
            )
            priority = np.array([r.priority for _, r in accepted], dtype=np.int64)
            admitted, too_late = self.admission.admit(priority, deadlines - now_ms)
            expired = deadlines <= now_ms
            for j, (i, req) in enumerate(accepted):
                if expired[j]:
                    status: Status = "expired"
                    reason = "deadline passed before ingest"
                elif too_late[j]:
                    status = "shed"
                    reason = f"remaining budget {deadlines[j] - now_ms:.1f} ms is below the minimum"
                elif not admitted[j]:
                    status, reason = "shed", "admission rate limit"
                else:
                    status, reason = "ok", ""
                    # Only what is served is remembered: re-sending a shed request is a retry.
                    self._remember(req.request_id)
                out[i] = _event(req, float(deadlines[j]), now_ms, status, reason)
        return [r for r in out if r is not None]

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        if len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)

    def _decode(self, raw: bytes, now_ms: float) -> Request | DeadLetter:
        if len(raw) > self.max_payload_bytes:
            rid, uid = self._codec.header_prefix(raw)
            return DeadLetter(
                stage=self.name,
                reason=f"payload of {len(raw)} bytes exceeds the limit of {self.max_payload_bytes}",
                payload=bytes(raw[:1024]),
                request_id=rid,
                user_id=uid,
            )
        try:
            req = self._codec.decode(raw)
        except CodecError as exc:
            rid, uid = self._codec.header(raw)
            return DeadLetter(
                stage=self.name,
                reason=f"invalid request: {exc}",
                payload=bytes(raw),
                request_id=rid,
                user_id=uid,
            )
        if req.v > SCHEMA_VERSION:
            return DeadLetter(
                stage=self.name,
                reason=f"request schema v{req.v} is newer than supported v{SCHEMA_VERSION}",
                payload=bytes(raw),
                request_id=req.request_id,
                user_id=req.user_id,
            )
        if req.deadline_ms is not None and req.timeout_ms is not None:
            return DeadLetter(
                stage=self.name,
                reason="invalid request: give deadline_ms or timeout_ms, not both",
                payload=bytes(raw),
                request_id=req.request_id,
                user_id=req.user_id,
            )
        problem = self._beyond_limits(req, now_ms)
        if problem:
            return DeadLetter(
                stage=self.name,
                reason=f"invalid request: {problem}",
                payload=bytes(raw),
                request_id=req.request_id,
                user_id=req.user_id,
            )
        return req

    def _beyond_limits(self, req: Request, now_ms: float) -> str:
        """What the schema cannot say: the operator's limits, and numbers a float32 model
        cannot take. Paths as msgspec writes them."""
        for n, limit, path in (
            (len(req.candidates), self.max_candidates, "candidates"),
            (len(req.exclude), self.max_exclude, "exclude"),
            (len(req.context), self.max_context_keys, "context"),
        ):
            if n > limit:
                return f"{n} entries exceed the limit of {limit} - at `$.{path}`"
        for key, value in req.context.items():
            if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= _F32_MAX):
                return f"{value!r} is not a finite float32 - at `$.context.{key[:64]}`"
        ahead = (
            req.timeout_ms
            if req.timeout_ms is not None
            else (req.deadline_ms - now_ms if req.deadline_ms is not None else 0.0)
        )
        if ahead > self.max_timeout_ms:
            field = "timeout_ms" if req.timeout_ms is not None else "deadline_ms"
            return (
                f"the deadline lies {ahead:.0f} ms ahead, beyond the limit of "
                f"{self.max_timeout_ms:g} - at `$.{field}`"
            )
        return ""


def _deadline(req: Request, now_ms: float, default_timeout_ms: float) -> float:
    if req.deadline_ms is not None:
        return float(req.deadline_ms)
    return now_ms + (req.timeout_ms if req.timeout_ms is not None else default_timeout_ms)


def _event(req: Request, deadline_ms: float, now_ms: float, status: Status, reason: str) -> Event:
    # A client clock ahead of ours must not make latencies negative.
    created = now_ms if req.created_at_ms is None else min(float(req.created_at_ms), now_ms)
    return Event(
        v=SCHEMA_VERSION,
        request_id=req.request_id,
        user_id=req.user_id,
        deadline_ms=deadline_ms,
        created_at_ms=created,
        k=req.k,
        priority=req.priority,
        candidates=np.array(req.candidates, dtype=np.int64),
        exclude=np.array(req.exclude, dtype=np.int64) if req.exclude else _EMPTY,
        context=req.context,
        status=status,
        reason=reason,
    )
