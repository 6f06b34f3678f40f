"""The edge against hostile input, and micro-batches against one oversized request.

Each test here failed before its fix: a repeated request_id went unanswered, an ``invalid``
answer carried ``user_id: -1``, an oversized blob was never answered, out-of-range numbers got
through, and one 10,000-candidate request made its batch neighbours expire.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from stages.builtin import Ingest
from stages.codec import ResponseCodec
from stages.events import Event, Response
from stages.harness import StageHarness
from stages.registry import resolve
from stages.runtime import BatchPolicy, BoundedQueue, CallbackSink, Chain, Envelope
from stages.runtime.runner import _parts
from stages.stage import BaseStage, Result

from .test_builtin import NOW, clock, request


def run(raw: list[bytes], **limits: object) -> tuple[list[Event], list[Response], list[str]]:
    out = StageHarness(Ingest(clock=clock, **limits), clock=clock).run(raw)  # type: ignore[arg-type]
    return out.forwarded, out.answers, [d.reason for d in out.dead]


class TestInvalidAnswerShape:
    def test_unreadable_user_id_is_null_not_minus_one(self) -> None:
        _, answers, reasons = run([b'{"request_id": "x", "user_id": "abc", "candidates": [1]}'])
        [r] = answers
        assert (r.status, r.user_id) == ("invalid", None) and "$.user_id" in r.reason
        assert json.loads(ResponseCodec().encode(r))["user_id"] is None
        assert len(reasons) == 1

    def test_readable_user_id_is_kept(self) -> None:
        _, [r], _ = run([request("x", candidates=[-1])])
        assert (r.status, r.user_id) == ("invalid", 3)

    def test_oversized_blob_is_answered_when_its_id_is_readable(self) -> None:
        blob = request("big", pad="x" * 5000)
        fwd, answers, reasons = run([blob, request("ok")], max_payload_bytes=4096)
        assert [e.request_id for e in fwd] == ["ok"]
        [r] = answers
        assert (r.request_id, r.status, r.user_id) == ("big", "invalid", 3)
        assert "exceeds the limit of 4096" in r.reason and len(reasons) == 1

    def test_oversized_blob_without_a_readable_id_is_only_dead_lettered(self) -> None:
        fwd, answers, reasons = run([b"[" * 5000], max_payload_bytes=4096)
        assert fwd == [] and answers == [] and "exceeds the limit" in reasons[0]


class TestLimits:
    @pytest.mark.parametrize(
        ("fields", "limits", "path"),
        [
            ({"candidates": list(range(11))}, {"max_candidates": 10}, "$.candidates"),
            ({"exclude": [1, 2, 3]}, {"max_exclude": 2}, "$.exclude"),
            ({"context": {str(i): i for i in range(5)}}, {"max_context_keys": 4}, "$.context"),
            ({"context": {"f": 1e300}}, {}, "$.context.f"),
            ({"timeout_ms": 10_001}, {"max_timeout_ms": 10_000}, "$.timeout_ms"),
            ({"deadline_ms": NOW * 1000 + 10_001}, {"max_timeout_ms": 10_000}, "$.deadline_ms"),
            ({"deadline_ms": 1e300}, {}, "$.deadline_ms"),
            ({"created_at_ms": 1e300}, {}, "$.created_at_ms"),
        ],
    )
    def test_beyond_a_limit_is_invalid_with_its_path(
        self, fields: dict[str, object], limits: dict[str, object], path: str
    ) -> None:
        fwd, [r], [reason] = run([request("x", **fields), request("ok")], **limits)
        assert [e.request_id for e in fwd] == ["ok"]
        assert r.status == "invalid" and path in r.reason and path in reason

    def test_at_the_limits_is_served(self) -> None:
        fwd, answers, _ = run(
            [request("x", candidates=list(range(10)), timeout_ms=10_000, context={"f": 3.0e38})],
            max_candidates=10,
            max_timeout_ms=10_000,
        )
        assert answers == [] and [e.request_id for e in fwd] == ["x"]

    def test_limits_are_stage_parameters(self) -> None:
        spec = resolve({"use": "ingest", "params": {"max_candidates": 500, "max_timeout_ms": 5e3}})
        assert spec.params.max_candidates == 500  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="max_candidates"):
            resolve({"use": "ingest", "params": {"max_candidates": 20_000}})


# -- head-of-line blocking ----------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Costly(BaseStage):
    """Costs 1 ms of (fake) time per 1,000 candidates, as lookups and scoring do."""

    def __init__(self, name: str, clock: FakeClock) -> None:
        self.name = name
        self._clock = clock

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        self._clock.now += sum(len(e.candidates) for e in batch) / 1e6
        return list(batch)


def ev(rid: str, user: int, n: int, budget_ms: float) -> Event:
    return Event(
        v=1,
        request_id=rid,
        user_id=user,
        deadline_ms=NOW * 1000 + budget_ms,
        created_at_ms=NOW * 1000,
        k=1,
        priority=0,
        candidates=np.arange(n, dtype=np.int64),
        exclude=np.zeros(0, dtype=np.int64),
        context={},
    )


def run_hol(policy: BatchPolicy) -> dict[str, str]:
    """One batch through three costly stages in one thread (the default; per-stage threads
    would overlap the stages, which a fake clock cannot model)."""
    fake = FakeClock()
    answers: list[Response] = []
    source = BoundedQueue()
    chain = Chain(
        [Costly(n, fake) for n in ("a", "b", "c")],
        source,
        forward=None,
        answers=CallbackSink(answers.extend),
        dead=CallbackSink(lambda _: None),
        pipeline="hol",
        policies=dict.fromkeys("abc", policy),
        threads="one",
        clock=fake,
    )
    # 12,600 light candidates cost 12.6 ms a stage: three stages fit their 30 ms; with the
    # 10,000-candidate request ahead of them, the third stage would start at 45 ms.
    batch = [ev("huge", 0, 10_000, 60_000)] + [ev(f"r{i}", i, 200, 30) for i in range(1, 64)]
    source.put_many([Envelope(e) for e in batch])
    source.close()
    chain.start()
    assert chain.join(10)
    chain.raise_error()
    return {r.request_id: r.status for r in answers}


def test_one_huge_request_does_not_expire_its_neighbours() -> None:
    status = run_hol(BatchPolicy(max_size=64, max_wait_ms=0))
    assert len(status) == 64 and status["huge"] == "ok"
    assert [s for s in status.values() if s != "ok"] == []


def test_without_a_candidate_bound_the_neighbours_expire() -> None:
    """The scenario above is the defect: bounded by requests alone, 63 answers are lost."""
    status = run_hol(BatchPolicy(max_size=64, max_wait_ms=0, max_candidates=1 << 40))
    assert list(status.values()).count("expired") == 63


def test_parts_bound_candidates_and_keep_order_per_user() -> None:
    sizes = [(1, 50), (2, 200), (1, 20), (3, 30), (4, 60), (2, 10)]  # (user, candidates)
    batch = [Envelope(ev(f"r{i}", u, n, 1e4)) for i, (u, n) in enumerate(sizes)]
    parts = _parts(batch, 100)
    ids = [[env.value.request_id for env in p] for p in parts]
    # Users by their largest request: 3 (30), 1 (50), 4 (60), 2 (200, alone, then its 10).
    assert ids == [["r3", "r0", "r2"], ["r4"], ["r1"], ["r5"]]
    assert all(sum(len(env.value.candidates) for env in p) <= 100 or len(p) == 1 for p in parts)
    assert _parts(batch[:1], 100) == [batch[:1]]
    assert math.isfinite(NOW)
