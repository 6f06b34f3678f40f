"""What any Kafka client can publish: plain JSON requests are answered; garbage lands in the
dead-letter topic with its reason in headers, and the valid requests around it are still served."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jizhi.client import Client
from stages.events import DeadLetter, Response
from tests.integration.workerkit import WorkerProc, Workers, unique_pipeline

pytestmark = pytest.mark.integration

KCAT = shutil.which("kcat") or shutil.which("kafkacat") or ""


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, world_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Workers, WorkerProc]]:
    """One worker with all five stages, shared by the tests of this module."""
    w = Workers(kafka_bootstrap, unique_pipeline("d"), world_dir, tmp_path_factory.mktemp("dlq"))
    proc = w.start("ingest,features,embed,score,rank")
    proc.wait_assigned()
    yield w, proc
    try:
        assert proc.terminate() == 0, w.logs()
    finally:
        w.close()


class Collected:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.dead: list[DeadLetter] = []
        self._lock = threading.Lock()

    def on_responses(self, batch: list[Response]) -> None:
        with self._lock:
            self.responses.extend(batch)

    def on_dead(self, batch: list[DeadLetter]) -> None:
        with self._lock:
            self.dead.extend(batch)

    def wait(self, responses: int, dead: int, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.responses) >= responses and len(self.dead) >= dead:
                return
            time.sleep(0.05)


def _kcat_produce(bootstrap: str, topic: str, files: list[Path]) -> None:
    """One message per file, as an operator would from a shell."""
    assert KCAT
    subprocess.run(
        [
            KCAT,
            "-P",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-X",
            "message.max.bytes=4000000",
            *map(str, files),
        ],
        check=True,
        timeout=30,
    )


@pytest.mark.skipif(not KCAT, reason="kcat is not installed")
def test_kcat_request_is_answered(
    pipeline: tuple[Workers, WorkerProc], kafka_bootstrap: str, tmp_path: Path
) -> None:
    w, _ = pipeline
    got = Collected()
    with Client(kafka_bootstrap, w.pipeline, on_responses=got.on_responses) as client:
        f = tmp_path / "req.json"
        f.write_text(
            '{"request_id": "kcat-1", "user_id": 3, "candidates": [1, 2, 3, 4, 5], "k": 2}'
        )
        _kcat_produce(kafka_bootstrap, client.requests_topic, [f])
        got.wait(responses=1, dead=0)
    assert [r.request_id for r in got.responses] == ["kcat-1"], w.logs()
    r = got.responses[0]
    assert r.status == "ok" and len(r.items) == 2 and set(r.items) <= {1, 2, 3, 4, 5}
    assert r.scores == sorted(r.scores, reverse=True)
    # The answer on the topic is plain JSON too: kcat can read it back.
    out = subprocess.run(
        [KCAT, "-C", "-b", kafka_bootstrap, "-t", f"jizhi.{w.pipeline}.responses", "-e", "-q"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    assert any(json.loads(line)["request_id"] == "kcat-1" for line in out.splitlines() if line)


@pytest.mark.skipif(not KCAT, reason="kcat is not installed")
def test_garbage_goes_to_dead_letters_with_a_reason(
    pipeline: tuple[Workers, WorkerProc], kafka_bootstrap: str, tmp_path: Path
) -> None:
    w, _ = pipeline
    got = Collected()
    payloads = {
        "valid-1": '{"request_id": "ok-1", "user_id": 1, "candidates": [7, 8, 9]}',
        "not-json": "this is not json {",
        "wrong-types": '{"request_id": "bad-types", "user_id": "abc", "candidates": [1, 2]}',
        "missing": '{"request_id": "missing-fields"}',
        "huge": json.dumps(
            {"request_id": "huge", "user_id": 1, "candidates": [1] * 2, "pad": "x" * (3 << 19)}
        ),
        "valid-2": '{"request_id": "ok-2", "user_id": 2, "candidates": [10, 11, 12], "k": 1}',
    }
    files = []
    for name, text in payloads.items():
        f = tmp_path / f"{name}.json"
        f.write_text(text)
        files.append(f)
    assert files[4].stat().st_size > 1 << 20  # over ingest's 1 MiB limit
    with Client(
        kafka_bootstrap, w.pipeline, on_responses=got.on_responses, on_dead=got.on_dead
    ) as c:
        _kcat_produce(kafka_bootstrap, c.requests_topic, files)
        got.wait(responses=4, dead=4)
    by_id = {r.request_id: r for r in got.responses}
    assert by_id["ok-1"].status == "ok" and by_id["ok-2"].status == "ok", w.logs()
    assert len(by_id["ok-2"].items) == 1
    # A bad request whose id could be read is answered "invalid", so its client stops waiting.
    assert by_id["bad-types"].status == "invalid" and "user_id" in by_id["bad-types"].reason
    assert by_id["missing-fields"].status == "invalid"
    assert "missing required field" in by_id["missing-fields"].reason
    assert len(got.dead) == 4, got.dead
    assert all(d.stage == "ingest" and d.reason for d in got.dead)
    reasons = {d.request_id or d.payload[:12].decode(errors="replace"): d.reason for d in got.dead}
    assert "invalid request" in reasons["this is not j"[:12]]
    assert "user_id" in reasons["bad-types"]
    assert "missing required field" in reasons["missing-fields"]
    huge = [d for d in got.dead if "exceeds the limit" in d.reason]
    assert len(huge) == 1 and len(huge[0].payload) <= 1024  # only a prefix is kept


def test_a_repeated_request_id_is_answered_not_left_to_time_out(
    pipeline: tuple[Workers, WorkerProc], kafka_bootstrap: str
) -> None:
    """The README's client snippet run twice: the second run used to wait 5 s for silence."""
    w, _ = pipeline
    rid = f"again-{uuid.uuid4().hex[:8]}"
    req = {"request_id": rid, "user_id": 7, "candidates": [1, 2, 3], "k": 2, "timeout_ms": 30_000}
    with Client(kafka_bootstrap, w.pipeline) as first_run:
        first = first_run.request(req, timeout=30.0)
        assert first.status == "ok", w.logs()
        # The same process re-sending (after a timeout, say) gets the first answer again.
        again = first_run.request(req, timeout=10.0)
        assert (again.status, again.items, again.scores) == ("ok", first.items, first.scores)
        # Sent twice at once: the repeat's `duplicate` answer comes first (ingest gives it
        # straight away), but the client waits for the first copy's answer.
        req2 = {**req, "request_id": f"{rid}-twice"}
        f1, f2 = first_run.submit(req2), first_run.submit(req2)
        first_run.flush()
        assert f1 is f2 and f1.result(30.0).status == "ok"
    with Client(kafka_bootstrap, w.pipeline) as second_run:
        t0 = time.monotonic()
        dup = second_run.request(req, timeout=10.0)
    assert dup.status == "duplicate" and dup.items == [] and dup.user_id == 7, dup
    assert "first answer is the answer" in dup.reason
    assert time.monotonic() - t0 < 5.0


def test_dead_letters_carry_the_request_id_header(
    pipeline: tuple[Workers, WorkerProc], kafka_bootstrap: str
) -> None:
    w, _ = pipeline
    tag = uuid.uuid4().hex[:8]
    got = Collected()
    bad_types = f'{{"request_id": "h-{tag}", "user_id": "abc", "candidates": [1]}}'.encode()
    too_many = json.dumps(
        {"request_id": f"big-{tag}", "user_id": 4, "candidates": [1], "pad": "x" * (1 << 20)}
    ).encode()
    with Client(
        kafka_bootstrap, w.pipeline, on_responses=got.on_responses, on_dead=got.on_dead
    ) as c:
        c.publish(bad_types)
        c.publish(too_many)
        c.flush()
        got.wait(responses=2, dead=2)
    answers = {r.request_id: r for r in got.responses}
    dead = {d.request_id: d for d in got.dead}
    assert {f"h-{tag}", f"big-{tag}"} <= set(dead), (got.dead, w.logs())
    assert "user_id" in dead[f"h-{tag}"].reason
    assert "exceeds the limit" in dead[f"big-{tag}"].reason
    # The invalid answers: an unreadable user_id is null, never a made-up -1.
    assert answers[f"h-{tag}"].status == "invalid" and answers[f"h-{tag}"].user_id is None
    assert answers[f"big-{tag}"].status == "invalid" and answers[f"big-{tag}"].user_id == 4
