"""Stages as Kafka consumer groups in separate `jizhi worker` processes, on a real broker."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jizhi.demo import DemoOptions, run_demo
from jizhi.publish import NotReadyError, PublishOptions, run_publish
from stages import metrics
from tests.integration.workerkit import (
    WORLD,
    Background,
    Workers,
    free_port,
    publish,
    unique_pipeline,
    workload,
)

pytestmark = pytest.mark.integration


def test_five_workers_answer_like_the_embedded_pipeline(
    workers: Workers, kafka_bootstrap: str, world_dir: Path
) -> None:
    requests, rate = 1500, 750.0
    port = free_port()
    procs = [
        workers.start(stage, *(["--metrics-port", str(port)] if stage == "embed" else []))
        for stage in ("ingest", "features", "embed", "score", "rank")
    ]
    for p in procs:
        p.wait_assigned()
    got = publish(kafka_bootstrap, workers.pipeline, requests, rate, keep_responses=True)
    s = got.summary
    assert (s["answered"], s["ok"], s["duplicates"], s["dead_lettered"]) == (
        requests,
        requests,
        0,
        0,
    ), f"{s}\n{workers.logs()}"

    # The same requests through the embedded pipeline give the same top-k.
    demo = run_demo(
        DemoOptions(
            world=WORLD,
            workload=workload(requests),
            rate=rate,
            world_root=world_dir,
            progress=False,
            keep_responses=True,
        )
    )
    want = {r.request_id: r for r in demo.tally.responses}
    assert len(want) == requests and all(r.status == "ok" for r in want.values())
    cut = len(got.prefix) + 1
    for r in got.tally.responses:
        w = want[r.request_id[cut:]]
        assert r.items == w.items, r.request_id
        np.testing.assert_allclose(r.scores, w.scores, rtol=1e-5, atol=1e-6)
    assert {r.request_id[cut:] for r in got.tally.responses} == set(want)
    assert all(
        set(r.stage_ms) == {"ingest", "features", "embed", "score", "rank"}
        for r in got.tally.responses
    )

    # Consumer lag per partition is exported (librdkafka statistics, every second here).
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline and f"{metrics.CONSUMER_LAG_NAME}{{" not in text:
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lag = [ln for ln in text.splitlines() if ln.startswith(f"{metrics.CONSUMER_LAG_NAME}{{")]
    assert lag and all('stage="embed"' in line for line in lag), text[-2000:]
    assert len(lag) == 4  # one gauge per owned partition

    for p in procs:
        assert p.terminate() == 0, workers.logs()


def test_a_worker_joining_and_leaving_loses_nothing(workers: Workers, kafka_bootstrap: str) -> None:
    """A second embed worker joins mid-stream (partitions move to it) and is SIGTERMed
    mid-stream (they move back): every request is answered, and none twice, because revoked
    partitions finish their in-flight events and commit before they are handed over."""
    first = [workers.start("ingest,features"), workers.start("embed"), workers.start("score,rank")]
    for p in first:
        p.wait_assigned()
    embed = first[1]
    requests = 4000
    run = Background(lambda: publish(kafka_bootstrap, workers.pipeline, requests, 500.0))
    second = workers.start("embed")
    second.wait_assigned()
    time.sleep(1.0)
    if run.done():
        pytest.fail(f"publishing ended before the second worker left: {run.result(0)}")
    assert second.terminate() == 0, workers.logs()
    s = run.result(120).summary
    assert s["unanswered"] == 0, f"{s}\n{workers.logs()}"
    assert s["duplicates"] == 0, f"{s}\n{workers.logs()}"
    assert s["ok"] == requests
    # The first embed worker gave partitions away and took them back.
    owned = [len(a["embed"]) for a in embed.assignments()]
    assert max(owned) == 4 and min(owned[1:]) < 4, owned
    assert embed.wait_assigned(lambda a: len(a["embed"]) == 4), workers.logs()
    for p in first:
        assert p.terminate() == 0, workers.logs()


def test_publish_says_when_no_worker_answers(kafka_bootstrap: str, world_dir: Path) -> None:
    """Before its clock starts, `jizhi publish` proves the pipeline answers; with no workers it
    fails fast with a reason instead of reporting every request expired."""
    opts = PublishOptions(
        bootstrap=kafka_bootstrap,
        pipeline=unique_pipeline("idle"),
        world=WORLD,
        workload=workload(10),
        warmup=3,
        ready_timeout_s=3.0,
        progress=False,
    )
    with pytest.raises(NotReadyError, match="jizhi worker"):
        run_publish(opts)
