"""A short soak in every CI run: workers held at 80% of their measured capacity, and neither
their memory nor p99 latency trending up. `python -m bench.soak` runs it for as long as asked;
the bounds here are generous because a shared two-core machine makes both noisy."""

from __future__ import annotations

import pytest

from bench.soak import SoakOptions, format_result, run_soak
from tests.integration.workerkit import Workers

pytestmark = pytest.mark.integration

# A leak of a few KiB per request would grow RSS by tens of MiB a minute at these rates. A queue
# growing because the offered rate is 10% over what the workers manage adds ~6,000 ms of p99 a
# minute; one 5 s window 1 s slower at the end of a 40 s run tilts the fit by ~1,300.
RSS_SLOPE_MIB_PER_MIN = 40.0
P99_SLOPE_MS_PER_MIN = 3_000.0


def test_soak_at_80_percent_keeps_memory_and_p99_flat(
    workers: Workers, kafka_bootstrap: str
) -> None:
    procs = [workers.start(s) for s in ("ingest,features", "embed", "score,rank")]
    for p in procs:
        p.wait_assigned()
    result = run_soak(
        SoakOptions(
            bootstrap=kafka_bootstrap,
            pipeline=workers.pipeline,
            seconds=40.0,
            probe_s=2.0,
            probe_rate=2_000.0,
        ),
        [p.proc.pid for p in procs],
    )
    report = format_result(result)
    print(report)
    logs = f"{report}\n{workers.logs()}"
    t = result.traffic
    assert t["lost"] == 0, logs
    assert result.rss_slope_mib_per_min < RSS_SLOPE_MIB_PER_MIN, logs
    assert result.p99_slope_ms_per_min < P99_SLOPE_MS_PER_MIN, logs
    for p in procs:
        assert p.terminate() == 0, workers.logs()
