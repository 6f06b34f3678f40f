"""The chaos loop on a real three-broker cluster: a minute of traffic while kill -9s hit a worker
of every stage, the allocator, the active controller and a partition leader (each restarted after
a while), and not one request lost or answered twice. `python -m bench.chaos --seconds N` runs
the same loop for as long as asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FAULTS, ChaosOptions, format_result, run_chaos

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_chaos_loses_nothing_and_answers_each_request_once(
    three_brokers: Path, tmp_path: Path
) -> None:
    result = run_chaos(
        ChaosOptions(seconds=60.0, rate=100.0, seed=11, state_dir=three_brokers, workdir=tmp_path)
    )
    report = format_result(result)
    print(report)  # the figures docs/reliability.md quotes
    logs = f"{report}\nlogs in {tmp_path}"
    assert {f.kind for f in result.faults} == set(FAULTS), logs
    assert [f for f in result.faults if f.error] == [], logs
    t = result.traffic
    assert t["published"] >= 5_000, logs
    assert t["delivery_errors"] == 0, logs
    assert t["lost"] == 0, logs
    assert t["duplicated"] == 0, logs
    # Every killed part came back by itself, and no orphan of the killed allocator lives on.
    assert [f.kind for f in result.faults if f.recovered_s is None] == [], logs
    assert result.orphans_left == 0, logs
