"""ingest: the edge. Validate, deduplicate, stamp deadlines, and decide admission.

Everything that arrives here is untrusted JSON from any Kafka client, so every failure is a value:
a `DeadLetter` naming the JSON path at fault (and the request id when one can be recovered, so the
client still gets an ``invalid`` answer).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from stages.admission import Admission
from stages.codec import CodecError, RequestCodec
from stages.events import SCHEMA_VERSION, DeadLetter, Event, Request, Status
from stages.stage import BaseStage, Result

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)


class Ingest(BaseStage):
    """Turns raw request bytes into events; one output per input, in order."""

    name = "ingest"
    takes = "requests"

    def __init__(
        self,
        *,
        default_timeout_ms: float = 200.0,
        max_payload_bytes: int = 1 << 20,
        dedupe_window: int = 100_000,
        admission: Admission | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.default_timeout_ms = default_timeout_ms
        self.max_payload_bytes = max_payload_bytes
        self.admission = admission or Admission(clock=clock)
        self._clock = clock
        self._codec = RequestCodec()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedupe_window = dedupe_window

    def process(self, batch: Sequence[bytes], /) -> list[Result]:
        now_ms = self._clock() * 1000.0
        out: list[Result | None] = [None] * len(batch)
        accepted: list[tuple[int, Request]] = []
        for i, raw in enumerate(batch):
            letter_or_request = self._decode(raw)
            if isinstance(letter_or_request, DeadLetter):
                out[i] = letter_or_request
            else:
                accepted.append((i, letter_or_request))

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
                out[i] = _event(req, float(deadlines[j]), now_ms, status, reason)
        return [r for r in out if r is not None]

    def _decode(self, raw: bytes) -> Request | DeadLetter:
        if len(raw) > self.max_payload_bytes:
            return DeadLetter(
                stage=self.name,
                reason=f"payload of {len(raw)} bytes exceeds the limit of {self.max_payload_bytes}",
                payload=bytes(raw[:1024]),
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
        if req.request_id in self._seen:
            # Not answered again: the first copy's answer is the answer.
            return DeadLetter(
                stage=self.name,
                reason=f"duplicate request_id {req.request_id!r}",
                payload=bytes(raw),
                user_id=req.user_id,
            )
        self._seen[req.request_id] = None
        if len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
        return req


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
