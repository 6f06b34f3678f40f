"""A worker killed with SIGKILL mid-stream and restarted: nothing is lost (at-least-once), and with
Kafka transactions nothing is answered twice either (exactly-once)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jizhi.client import Client
from stages.events import Response
from tests.integration.workerkit import (
    Background,
    WorkerProc,
    Workers,
    publish,
    publish_argv,
    unique_pipeline,
)

pytestmark = pytest.mark.integration


class AnswerWatch:
    """Counts a pipeline's answers to counted requests (not the publisher's warm-up), read
    committed, so that a kill can be timed against the traffic instead of a clock."""

    def __init__(self, bootstrap: str, pipeline: str) -> None:
        self._answered = 0
        self._lock = threading.Lock()
        self._client = Client(bootstrap, pipeline, on_responses=self._count)

    def _count(self, batch: list[Response]) -> None:
        with self._lock:
            self._answered += sum(not r.request_id.startswith("warmup-") for r in batch)

    @property
    def answered(self) -> int:
        with self._lock:
            return self._answered

    def kill_mid_stream(
        self, victim: WorkerProc, requests: int, running: Callable[[], bool], *, first: int = 100
    ) -> int:
        """SIGKILL ``victim`` once ``first`` answers have arrived while the publisher still runs
        and answers are still pending; returns the count at the kill. Fails, saying which, when
        the traffic never flows or is over before the kill could land in it."""
        end = time.monotonic() + 90.0
        while self.answered < first:
            assert running(), f"the publisher ended after {self.answered} answers, before a kill"
            assert time.monotonic() < end, f"answers never flowed: {self.answered} in 90 s"
            time.sleep(0.02)
        victim.kill()
        at_kill = self.answered
        assert running(), "the publisher had finished: the kill was not mid-stream"
        assert first <= at_kill < requests, f"{at_kill} of {requests} answered at the kill"
        return at_kill

    def __enter__(self) -> AnswerWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()


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
    with AnswerWatch(kafka_bootstrap, workers.pipeline) as watch:
        run = Background(lambda: publish(kafka_bootstrap, workers.pipeline, requests, 500.0))
        at_kill = watch.kill_mid_stream(procs[1], requests, lambda: not run.done())
    print(f"at-least-once: embed killed with {at_kill} of {requests} answered")
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
        *publish_argv(kafka_bootstrap, w.pipeline, requests, rate=400),
        "--summary-json",
        str(summary),
    ]
    with AnswerWatch(kafka_bootstrap, w.pipeline) as watch:
        publisher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        at_kill = watch.kill_mid_stream(procs[1], requests, lambda: publisher.poll() is None)
    time.sleep(0.5)
    again = w.start("embed", "--instance", "embed-a")
    out, _ = publisher.communicate(timeout=120)
    s = json.loads(summary.read_text())
    print(f"exactly-once: embed killed with {at_kill} of {requests} answered")
    assert publisher.returncode == 0, f"{out.decode()}\n{s}\n{w.logs()}"
    assert s["answered"] == requests and s["unanswered"] == 0, f"{s}\n{w.logs()}"
    assert s["duplicates"] == 0, f"{s}\n{w.logs()}"
    assert s["ok"] == requests, s
    assert b"throughput" in out and b"latency p99" in out  # the demo's table
    for p in (procs[0], again, procs[2]):
        assert p.terminate() == 0, w.logs()
