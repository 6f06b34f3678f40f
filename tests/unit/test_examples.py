"""The examples a user copies must keep working."""

from __future__ import annotations

import runpy
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.blocklist import Blocklist
from examples.diversity import CapPerCategory
from examples.make_tables import make_tables
from jizhi.config import load_settings, pipeline_of
from stages import Event, StageHarness

ROOT = Path(__file__).resolve().parents[2]


def test_custom_stage_example_runs_and_boosts_even_ids(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(ROOT / "examples" / "custom_stage.py"), run_name="__main__")
    printed = capsys.readouterr().out.strip().strip("[]")
    scores = [float(x) for x in printed.split(",")]
    assert scores == pytest.approx([0.5, 0.6, 0.1])


# -- the deployable example stages --------------------------------------------------------------


def scored_event(candidates: list[int], scores: list[float] | None = None, rid: str = "r") -> Event:
    return Event(
        v=1,
        request_id=rid,
        user_id=1,
        deadline_ms=1e15,
        created_at_ms=0.0,
        k=3,
        priority=0,
        candidates=np.array(candidates, dtype=np.int64),
        exclude=np.zeros(0, dtype=np.int64),
        context={},
        scores=None if scores is None else np.array(scores, dtype=np.float32),
    )


def test_blocklist_drops_blocked_candidates_and_excludes_all_blocked(tmp_path: Path) -> None:
    table = tmp_path / "b.csv"
    table.write_text("item_id\n5\n7 # recalled\n\n9,reason\n")
    stage = Blocklist(str(table))
    assert stage.blocked.tolist() == [5, 7, 9]
    out = (
        StageHarness(stage)
        .run([scored_event([1, 5, 2]), scored_event([3, 4]), scored_event([7, 9])])
        .forwarded
    )
    assert [e.candidates.tolist() for e in out] == [[1, 2], [3, 4], [7, 9]]
    assert out[2].exclude.tolist() == [7, 9]  # nothing left to recommend: rank returns none


def test_blocklist_reports_a_bad_row(tmp_path: Path) -> None:
    table = tmp_path / "b.csv"
    table.write_text("1\n2\nthree\n")
    with pytest.raises(ValueError, match=r"b.csv:3: 'three' is not an item id"):
        Blocklist(str(table))


def _capped_brute_force(
    cands: list[int], scores: list[float], cat: dict[int, int], cap: int
) -> list[float]:
    """Per candidate: how many caps it is past, counting its category's better-scored peers."""
    out = []
    for i, (c, s) in enumerate(zip(cands, scores, strict=True)):
        if c not in cat:
            out.append(s)
            continue
        better = sum(
            1
            for j, (c2, s2) in enumerate(zip(cands, scores, strict=True))
            if cat.get(c2) == cat[c] and (s2 > s or (s2 == s and j < i))
        )
        out.append(s - (better // cap) * 1e4)
    return out


@given(
    rows=st.lists(
        st.lists(st.tuples(st.integers(0, 30), st.floats(0, 1, width=32)), min_size=1, max_size=25),
        min_size=1,
        max_size=6,
    ),
    cap=st.integers(1, 4),
)
@settings(max_examples=60, deadline=None)
def test_diversity_matches_a_brute_force_per_request(
    rows: list[list[tuple[int, float]]], cap: int
) -> None:
    table = Path(tempfile.mkdtemp()) / "cats.csv"
    cat = {i: i % 4 for i in range(0, 25)}  # ids 25..30 have no category: never capped
    table.write_text("item_id,category\n" + "".join(f"{i},{c}\n" for i, c in cat.items()))
    stage = CapPerCategory(str(table), max_per_category=cap)
    batch = [
        scored_event([c for c, _ in r], [s for _, s in r], rid=str(n)) for n, r in enumerate(rows)
    ]
    out = StageHarness(stage).run(batch).forwarded
    for e, r in zip(out, rows, strict=True):
        want = _capped_brute_force([c for c, _ in r], [s for _, s in r], cat, cap)
        assert e.scores is not None
        np.testing.assert_allclose(e.scores, np.array(want, dtype=np.float32), rtol=0, atol=1e-3)


def test_the_example_fleet_config_declares_two_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    s = load_settings(ROOT / "examples" / "pipelines.toml")
    assert [(p.name, p.priority) for p in s.services] == [("home", 10), ("promo", 1)]
    assert pipeline_of(s.service("home")).names == (
        "ingest",
        "blocklist",
        "features",
        "embed",
        "score",
        "diversity",
        "rank",
    )


def test_make_tables_writes_what_the_stages_read(tmp_path: Path) -> None:
    block, cats = make_tables(tmp_path, items=5_000)
    assert len(Blocklist(str(block)).blocked) == 50
    stage = CapPerCategory(str(cats))
    assert stage.dense and stage.category(np.array([0, 4_999, 5_000])).tolist()[2] == -1
