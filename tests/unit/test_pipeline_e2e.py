"""The embedded pipeline end to end: every request answered exactly once, with the top-k that a
brute-force numpy computation on the same inputs gives."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from jizhi.config import PipelineSettings, Settings, StoreSettings
from jizhi.demo import DemoOptions, run_demo
from jizhi.synth import _DEVICES, Workload, WorldSpec
from stages.builtin.features import ContextHasher
from stages.model import RankingModel
from storage import EmbeddedStore


def brute_force_scores(
    model: RankingModel, user_in: npt.NDArray[np.float32], items: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """The model written out plainly, per request, in float64: no batching, no decomposition."""
    w = {k: v.astype(np.float64) for k, v in model.weights().items()}
    u = np.tanh(user_in.astype(np.float64) @ w["wu"] + w["bu"])
    v = np.tanh(items.astype(np.float64) @ w["wi"] + w["bi"])
    ur = np.broadcast_to(u, v.shape)
    x = np.concatenate([ur * v, ur, v], axis=1)
    h = np.maximum(x @ w["w1"] + w["b1"], 0.0)
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(h @ w["w2"] + w["b2"][0])))
    return result


def expected_top_k(
    cands: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], k: int
) -> list[int]:
    _, first = np.unique(cands, return_index=True)
    keep = np.sort(first)
    order = keep[np.lexsort((keep, -scores[keep]))]
    return cands[order[:k]].tolist()


@pytest.mark.parametrize("threads", ["per_stage", "one"])
def test_every_request_answered_once_with_brute_force_top_k(tmp_path: Path, threads: str) -> None:
    spec = WorldSpec(users=500, items=20_000, dim=16, context_dim=8, seed=5)
    workload = Workload(requests=1500, candidates=120, k=7, timeout_ms=60_000, zipf=1.1, seed=9)
    settings = Settings(
        pipeline=PipelineSettings(
            batch_size=32, context_dim=8, default_timeout_ms=60_000, threads=threads
        ),  # type: ignore[arg-type]
        store=StoreSettings(cache_bytes=2000 * 16 * 4),
    )
    result = run_demo(
        DemoOptions(
            world=spec,
            workload=workload,
            rate=0,
            settings=settings,
            world_root=tmp_path,
            progress=False,
            keep_responses=True,
        )
    )
    s = result.summary
    assert result.error is None
    assert s["requests"] == s["answered"] == s["ok"] == 1500
    assert s["duplicates"] == 0 and s["unanswered"] == 0 and s["dead_lettered"] == 0
    assert 0.0 < s["cache_hit_ratio"] < 1.0
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]

    responses = {r.request_id: r for r in result.tally.responses}
    assert len(responses) == 1500
    model = RankingModel.load(result.world.model_path)
    store = EmbeddedStore(result.world.store_path)
    hasher = ContextHasher(8)
    checked = 0
    for batch in workload.batches(spec, chunk=100):
        for rid, user, cands in zip(batch.ids, batch.users.tolist(), batch.candidates, strict=True):
            r = responses[rid]
            assert r.status == "ok" and set(r.stage_ms) == {
                "ingest",
                "features",
                "embed",
                "score",
                "rank",
            }
            hour = int(r.created_at_ms // 3_600_000) % 24
            ctx = hasher.transform([{"device": _DEVICES[user % 3], "hour": hour}])[0]
            uvec = store.get_many("users", np.array([user])).vectors[0]
            items = store.get_many("items", cands).vectors
            scores = brute_force_scores(model, np.concatenate([uvec, ctx])[None, :], items)
            want = expected_top_k(cands, scores, workload.k)
            if r.items != want:
                # Only a float tie at the k-th place may reorder; the scores must still agree.
                got_scores = np.array(r.scores)
                want_scores = np.sort(scores[np.isin(cands, want)])[::-1][: workload.k]
                np.testing.assert_allclose(np.sort(got_scores)[::-1], want_scores, rtol=1e-5)
            np.testing.assert_allclose(r.scores, np.sort(r.scores)[::-1])
            checked += 1
    store.close()
    assert checked == 1500


def test_summary_counts_expired_when_deadlines_are_impossible(tmp_path: Path) -> None:
    spec = WorldSpec(users=50, items=1000, dim=8, context_dim=4, seed=1)
    workload = Workload(requests=300, candidates=20, k=3, timeout_ms=0.001, seed=2)
    settings = Settings(pipeline=PipelineSettings(context_dim=4, min_budget_ms=0.0))
    result = run_demo(
        DemoOptions(
            world=spec,
            workload=workload,
            rate=0,
            settings=settings,
            world_root=tmp_path,
            progress=False,
        )
    )
    s = result.summary
    assert s["answered"] == 300 and s["ok"] == 0
    assert s["expired"] + s["shed"] == 300
    assert msgspec.json.encode(s)  # the summary is JSON-serializable as written


def test_pregenerated_requests_are_all_answered(tmp_path: Path) -> None:
    spec = WorldSpec(users=50, items=1000, dim=8, context_dim=4, seed=1)
    workload = Workload(requests=500, candidates=20, k=3, timeout_ms=60_000, seed=3)
    settings = Settings(pipeline=PipelineSettings(context_dim=4))
    result = run_demo(
        DemoOptions(
            world=spec,
            workload=workload,
            rate=0,
            settings=settings,
            world_root=tmp_path,
            progress=False,
            pregenerate=True,
        )
    )
    s = result.summary
    assert (s["answered"], s["ok"], s["duplicates"]) == (500, 500, 0)
