"""The allocator's history on disk: what is recorded, what the forecast and the planner read."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from allocator.history import DAY_S, History, Record
from allocator.planner import Sample

T0 = dt.datetime(2026, 11, 20, 19, 0, tzinfo=dt.UTC).timestamp()
"""19:00 UTC on a day: a bucket boundary for 5-minute buckets."""


def rec(at: float, arrival: float, *, stage: str = "ingest", lag: float = 0.0) -> Record:
    return Record(at, stage, 4, arrival, arrival, lag, 250.0)


def test_records_are_lines_per_utc_day_and_torn_lines_are_skipped(tmp_path: Path) -> None:
    h = History(tmp_path)
    midnight = dt.datetime(2026, 11, 21, tzinfo=dt.UTC).timestamp()
    h.record([rec(midnight - 1, 10.0), rec(midnight + 1, 20.0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-20.jsonl", "2026-11-21.jsonl"]
    line = json.loads((tmp_path / "2026-11-20.jsonl").read_text())
    assert line == {
        "at": midnight - 1,
        "stage": "ingest",
        "consumers": 4,
        "arrival": 10.0,
        "completed": 10.0,
        "lag": 0.0,
        "service": 250.0,
    }
    with (tmp_path / "2026-11-21.jsonl").open("a") as f:
        f.write('{"at": 1, "stage": "x", "consu')  # a crash mid-line
    assert [r.arrival for r in h.read("2026-11-21")] == [20.0]
    assert list(h.read("1999-01-01")) == []


def test_forecast_is_the_mean_of_earlier_days_now_and_the_highest_within_the_lead(
    tmp_path: Path,
) -> None:
    h = History(tmp_path, days=3)
    for k, level in ((1, 100.0), (2, 200.0)):  # yesterday and the day before; none 3 days back
        day = T0 - k * DAY_S
        h.record([rec(day + 10, level), rec(day + 200, level), rec(day + 310, 3 * level)])
    now = T0 + 240  # in the 19:00 bucket; 19:05 is within a 120 s lead
    assert h.forecast("ingest", now, 120.0) == pytest.approx((150.0, 450.0))
    assert h.forecast("ingest", now, 0.0) == pytest.approx((150.0, 150.0))
    assert h.forecast("features", now, 120.0) == (None, None)
    assert h.forecast("ingest", now + 3600, 120.0) == (None, None)  # nothing recorded at 20:00


def test_a_day_still_being_written_is_read_again(tmp_path: Path) -> None:
    h = History(tmp_path, days=1)
    h.record([rec(T0 - DAY_S + 10, 100.0)])
    assert h.forecast("ingest", T0 + 20, 0.0)[0] == pytest.approx(100.0)
    h.record([rec(T0 - DAY_S + 20, 300.0)])
    assert h.forecast("ingest", T0 + 20, 0.0)[0] == pytest.approx(200.0)


def test_old_days_are_deleted(tmp_path: Path) -> None:
    h = History(tmp_path, days=1, keep_days=2)
    (tmp_path / "notes.jsonl").write_text("not a day\n")
    h.record([rec(T0 - 5 * DAY_S, 1.0)])
    h2 = History(tmp_path, days=1, keep_days=2)
    h2.record([rec(T0, 1.0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-20.jsonl", "notes.jsonl"]


def test_samples_are_the_backlogged_looks(tmp_path: Path) -> None:
    h = History(tmp_path)
    h.record(
        [
            rec(T0, 100.0, stage="score", lag=50.0),  # under 1 s of arrivals: keeping up
            rec(T0 + 10, 100.0, stage="score", lag=5000.0),
            Record(T0 + 20, "score", 0, 100.0, 0.0, 9000.0),  # no consumers: no capacity seen
        ]
    )
    assert h.samples() == [Sample("score", 4, 100.0)]
    assert h.samples(since=T0 + 11) == []


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_days"):
        History(tmp_path, days=7, keep_days=7)
