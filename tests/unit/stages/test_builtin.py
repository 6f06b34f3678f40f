"""The five built-in stages through the stage harness (real runner routing, no transport)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.admission import Admission
from stages.builtin import Embed, Features, Ingest, Rank, Score
from stages.builtin.features import ContextHasher
from stages.builtin.rank import _repeats
from stages.events import Event
from stages.harness import StageHarness
from stages.model import RankingModel
from storage import Lookup, ResultCache, TieredStore

from ..conftest import CTX, DIM, ITEMS

NOW = 1_700_000_000.0


def clock() -> float:
    return NOW


def request(rid: str = "r1", **fields: object) -> bytes:
    body: dict[str, object] = {"request_id": rid, "user_id": 3, "candidates": [1, 2, 3], "k": 2}
    body.update(fields)
    return msgspec.json.encode(body)


def event(rid: str = "r", cands: list[int] | None = None, **kw: object) -> Event:
    fields: dict[str, object] = {
        "v": 1,
        "request_id": rid,
        "user_id": 3,
        "deadline_ms": NOW * 1000 + 10_000,
        "created_at_ms": NOW * 1000 - 1,
        "k": 2,
        "priority": 0,
        "candidates": np.array(cands if cands is not None else [1, 2, 3], dtype=np.int64),
        "exclude": np.zeros(0, dtype=np.int64),
        "context": {},
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


class TestIngest:
    def test_valid_request_becomes_event_with_deadline(self) -> None:
        h = StageHarness(Ingest(default_timeout_ms=150, clock=clock), clock=clock)
        out = h.run(
            [request(), request("r2", timeout_ms=40), request("r3", deadline_ms=NOW * 1000 + 7)]
        )
        assert [e.request_id for e in out.forwarded] == ["r1", "r2", "r3"]
        assert [e.deadline_ms - NOW * 1000 for e in out.forwarded] == [150, 40, 7]
        assert out.forwarded[0].candidates.tolist() == [1, 2, 3]
        assert out.forwarded[0].stamps.keys() == {"ingest"}
        assert not out.dead and not out.answers

    def test_garbage_is_dead_lettered_and_known_ids_are_answered_invalid(self) -> None:
        h = StageHarness(Ingest(clock=clock), clock=clock)
        out = h.run(
            [
                b"\xff not json",
                request("bad-k", k=0),
                request("neg", candidates=[1, -5]),
                msgspec.json.encode({"request_id": "nouser", "candidates": [1]}),
                request("ok"),
            ]
        )
        assert [e.request_id for e in out.forwarded] == ["ok"]
        reasons = [d.reason for d in out.dead]
        assert len(out.dead) == 4
        assert "$.k" in reasons[1] and "$.candidates[1]" in reasons[2] and "user_id" in reasons[3]
        assert out.dead[0].request_id == "" and out.dead[0].payload == b"\xff not json"
        answered = {r.request_id: r for r in out.answers}
        assert set(answered) == {"bad-k", "neg", "nouser"}
        assert all(r.status == "invalid" and r.reason for r in answered.values())

    def test_payload_limit_and_both_deadline_forms(self) -> None:
        h = StageHarness(Ingest(max_payload_bytes=100, clock=clock), clock=clock)
        out = h.run(
            [
                request("big", candidates=list(range(100))),
                request("both", timeout_ms=5, deadline_ms=5),
            ]
        )
        assert len(out.dead) == 2
        assert "exceeds the limit" in out.dead[0].reason
        assert "not both" in out.dead[1].reason

    def test_duplicate_request_id_is_answered_duplicate_not_served_twice(self) -> None:
        h = StageHarness(Ingest(clock=clock), clock=clock)
        out = h.run([request("a"), request("a"), request("b")])
        assert [e.request_id for e in out.forwarded] == ["a", "b"]
        assert out.dead == []
        [dup] = out.answers
        assert (dup.request_id, dup.status, dup.items, dup.user_id) == ("a", "duplicate", [], 3)
        assert "first answer is the answer" in dup.reason
        # A later batch too: the window spans batches.
        again = h.run([request("b")])
        assert [r.status for r in again.answers] == ["duplicate"] and again.forwarded == []

    def test_a_shed_request_sent_again_is_a_retry_not_a_duplicate(self) -> None:
        h = StageHarness(Ingest(clock=clock), clock=clock)
        first = h.run([request("late", deadline_ms=NOW * 1000 - 1)])
        assert [r.status for r in first.answers] == ["expired"]
        retry = h.run([request("late", timeout_ms=100)])
        assert [e.request_id for e in retry.forwarded] == ["late"] and retry.answers == []

    def test_expired_and_shed_are_answered_at_once(self) -> None:
        adm = Admission(rate=1.0, burst_seconds=1.0, min_budget_ms=5, clock=clock)
        h = StageHarness(Ingest(admission=adm, clock=clock), clock=clock)
        out = h.run(
            [
                request("late", deadline_ms=NOW * 1000 - 1),
                request("tight", timeout_ms=2),
                request("low", priority=0),
                request("high", priority=9),
            ]
        )
        status = {r.request_id: r.status for r in out.answers}
        assert status == {"late": "expired", "tight": "shed", "low": "shed"}
        assert [e.request_id for e in out.forwarded] == ["high"]


def test_context_hasher_is_stable_and_signed() -> None:
    a = ContextHasher(8).transform([{"device": "ios", "hour": 3}, {}])
    b = ContextHasher(8).transform([{"hour": 3, "device": "ios"}, {}])
    assert np.array_equal(a, b)
    assert np.count_nonzero(a[0]) in (1, 2) and not a[1].any()
    assert np.abs(a[0]).sum() == pytest.approx(4.0)


def test_features_attach_user_embedding_and_context(
    store: TieredStore, tables: dict[str, np.ndarray]
) -> None:
    h = StageHarness(Features(store, context_dim=CTX), clock=clock)
    out = h.run([event("a", user_id=3, context={"device": "web"}), event("b", user_id=9999)])
    a, b = out.forwarded
    assert a.user_vec is not None and a.user_vec.shape == (DIM + CTX,)
    np.testing.assert_array_equal(a.user_vec[:DIM], tables["users"][3])
    assert np.count_nonzero(a.user_vec[DIM:]) == 1
    assert b.user_vec is not None and not b.user_vec.any()  # unknown user: zero fallback


def test_embed_splits_one_lookup_back_per_request(
    store: TieredStore, tables: dict[str, np.ndarray]
) -> None:
    h = StageHarness(Embed(store), clock=clock)
    out = h.run([event("a", [5, 6]), event("b", [7, ITEMS + 10, 8])])
    a, b = out.forwarded
    np.testing.assert_array_equal(a.item_vecs, tables["items"][[5, 6]])
    assert b.item_vecs is not None and b.item_vecs.shape == (3, DIM)
    np.testing.assert_array_equal(b.item_vecs[[0, 2]], tables["items"][[7, 8]])
    assert not b.item_vecs[1].any()
    assert (a.missing, b.missing) == (0, 1)


def test_score_matches_per_request_scoring(model: RankingModel) -> None:
    rng = np.random.default_rng(0)
    evs = [
        event(
            str(i),
            list(range(n)),
            user_vec=rng.standard_normal(DIM + CTX).astype(np.float32),
            item_vecs=rng.standard_normal((n, DIM)).astype(np.float32),
        )
        for i, n in enumerate([3, 1, 7])
    ]
    out = StageHarness(Score(model), clock=clock).run(evs)
    for e, o in zip(evs, out.forwarded, strict=True):
        alone = model.score(e.user_vec[None, :], e.item_vecs, np.array([len(e.candidates)]))  # type: ignore[index]
        np.testing.assert_allclose(o.scores, alone, rtol=1e-5)  # type: ignore[arg-type]


def test_score_dead_letters_events_missing_inputs(model: RankingModel) -> None:
    out = StageHarness(Score(model), clock=clock).run([event("x")])
    assert len(out.dead) == 1 and "features" in out.dead[0].reason
    assert out.answers[0].status == "invalid"


def test_rank_top_k_with_rules() -> None:
    evs = [
        event("a", [10, 11, 12, 13], k=2, scores=np.array([0.1, 0.9, 0.5, 0.7], np.float32)),
        # duplicate 20 keeps its first score; 22 excluded; k larger than what is left
        event(
            "b",
            [20, 21, 20, 22],
            k=5,
            scores=np.array([0.2, 0.3, 0.99, 0.8], np.float32),
            exclude=np.array([22], np.int64),
        ),
        # ties rank by position
        event("c", [30, 31, 32], k=2, scores=np.array([0.5, 0.5, 0.5], np.float32)),
    ]
    out = StageHarness(Rank(), last=True, clock=clock).run(evs)
    got = {r.request_id: (r.items, r.scores) for r in out.answers}
    assert got["a"][0] == [11, 13]
    assert got["b"][0] == [21, 20]
    assert got["b"][1] == pytest.approx([0.3, 0.2])
    assert got["c"][0] == [30, 31]
    assert all(r.status == "ok" for r in out.answers)


class _DegradedStore:
    """Wraps a store and marks chosen ids as answered by a fallback (backend down)."""

    def __init__(self, inner: TieredStore, down: set[int]) -> None:
        self.inner = inner
        self.down = down

    def table(self, name: str, /) -> object:
        return self.inner.table(name)

    def get_many(
        self, table: str, ids: np.ndarray, /, *, deadline_ms: float | None = None
    ) -> Lookup:
        looked = self.inner.get_many(table, ids, deadline_ms=deadline_ms)
        mask = np.isin(ids, list(self.down))
        return Lookup(looked.vectors, looked.found & ~mask, mask)

    def put_many(self, table: str, ids: np.ndarray, vectors: np.ndarray, /) -> None:
        raise NotImplementedError

    def close(self) -> None:
        return None


def test_degraded_lookups_are_counted_and_flag_the_answer(
    store: TieredStore, model: RankingModel
) -> None:
    flaky = _DegradedStore(store, down={6, 3})  # item 6, and user 3
    evs = (
        StageHarness(Features(flaky, context_dim=CTX), clock=clock)
        .run(  # type: ignore[arg-type]
            [event("a", [5, 6]), event("b", [7], user_id=4)]
        )
        .forwarded
    )
    evs = StageHarness(Embed(flaky), clock=clock).run(evs).forwarded  # type: ignore[arg-type]
    assert [e.degraded for e in evs] == [2, 0]
    evs = StageHarness(Score(model), clock=clock).run(evs).forwarded
    answers = StageHarness(Rank(), last=True, clock=clock).run(evs).answers
    assert {r.request_id: r.degraded for r in answers} == {"a": True, "b": False}


def test_score_with_tower_cache_matches_without(model: RankingModel) -> None:
    rng = np.random.default_rng(4)
    evs = [
        event(
            str(i),
            list(range(5)),
            user_id=i % 2,
            user_vec=np.full(DIM + CTX, i % 2, dtype=np.float32),
            item_vecs=rng.standard_normal((5, DIM)).astype(np.float32),
        )
        for i in range(6)
    ]
    towers = ResultCache(1 << 20, dim=model.shape.tower_dim)
    plain = StageHarness(Score(model), clock=clock).run(evs).forwarded
    cached = StageHarness(Score(model, towers=towers), clock=clock).run(evs).forwarded
    for a, b in zip(plain, cached, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)  # type: ignore[arg-type]
    # two distinct (user, context) keys: computed once each, the other four rows reuse them
    assert towers.computed == 2 and towers.reused == 4


@given(
    st.lists(
        st.lists(st.sampled_from([0, 1, 2, 7, 2**47 - 1, 2**47, 2**62]), min_size=1, max_size=30),
        min_size=1,
        max_size=5,
    )
)
@settings(max_examples=200, deadline=None)
def test_repeats_marks_every_later_copy_within_a_row(rows: list[list[int]]) -> None:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    want = np.zeros(ids.shape, dtype=bool)
    for i in range(len(rows)):
        seen: set[int] = set()
        for j in range(width):
            want[i, j] = int(ids[i, j]) in seen
            seen.add(int(ids[i, j]))
    np.testing.assert_array_equal(_repeats(ids), want)
