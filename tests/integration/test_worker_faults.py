"""A worker killed with SIGKILL mid-stream and restarted: nothing is lost (at-least-once), and with
Kafka transactions nothing is answered twice either (exactly-once)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.workerkit import (
    PARTITIONS,
    WORLD,
    Background,
    Workers,
    publish,
    unique_pipeline,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def eos_workers(kafka_bootstrap: str, world_dir: Path, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(kafka_bootstrap, unique_pipeline("x"), world_dir, tmp_path, exactly_once=True)
    yield w
    w.close()


def test_kill_9_and_restart_loses_nothing(workers: Workers, kafka_bootstrap: str) -> None:
    procs = [
        workers.start("ingest,features"),
        workers.start("embed", "--instance", "embed-a"),
        workers.start("score,rank"),
    ]
    for p in procs:
        p.wait_assigned()
    requests = 3000
    run = Background(lambda: publish(kafka_bootstrap, workers.pipeline, requests, 500.0))
    time.sleep(2.0)
    assert not run.done()
    procs[1].kill()
    time.sleep(0.5)
    again = workers.start("embed", "--instance", "embed-a")
    again.wait_assigned()
    s = run.result(120).summary
    assert s["unanswered"] == 0, f"{s}\n{workers.logs()}"
    assert s["ok"] == requests, s
    # Redone work may answer a request twice (at-least-once); say how often for the record.
    print(f"at-least-once after kill -9: {s['duplicates']} duplicate answers")
    for p in (procs[0], again, procs[2]):
        assert p.terminate() == 0, workers.logs()


def test_kill_9_with_exactly_once_answers_each_request_once(
    eos_workers: Workers, kafka_bootstrap: str, tmp_path: Path
) -> None:
    w = eos_workers
    procs = [
        w.start("ingest,features", "--instance", "if-a"),
        w.start("embed", "--instance", "embed-a"),
        w.start("score,rank", "--instance", "sr-a"),
    ]
    for p in procs:
        p.wait_assigned()
    requests = 2000
    summary = tmp_path / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "jizhi.cli",
        "publish",
        "--bootstrap",
        kafka_bootstrap,
        "--pipeline",
        w.pipeline,
        "--requests",
        str(requests),
        "--rate",
        "400",
        "--timeout-ms",
        "60000",
        "--warmup-s",
        "0",
        "--answer-timeout",
        "60",
        "--partitions",
        str(PARTITIONS),
        "--users",
        str(WORLD.users),
        "--items",
        str(WORLD.items),
        "--dim",
        str(WORLD.dim),
        "--no-progress",
        "--summary-json",
        str(summary),
    ]
    publisher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(2.5)
    procs[1].kill()
    time.sleep(0.5)
    again = w.start("embed", "--instance", "embed-a")
    out, _ = publisher.communicate(timeout=120)
    s = json.loads(summary.read_text())
    assert publisher.returncode == 0, f"{out.decode()}\n{s}\n{w.logs()}"
    assert s["answered"] == requests and s["unanswered"] == 0, f"{s}\n{w.logs()}"
    assert s["duplicates"] == 0, f"{s}\n{w.logs()}"
    assert s["ok"] == requests, s
    assert b"throughput" in out and b"latency p99" in out  # the demo's table
    for p in (procs[0], again, procs[2]):
        assert p.terminate() == 0, w.logs()
