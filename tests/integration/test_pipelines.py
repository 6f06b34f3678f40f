"""Pipelines declared by config, on a real broker: users' stages deployed like built-in ones, and
two services served by the same worker processes without an answer crossing between them."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from examples.make_tables import make_tables
from jizhi.config import load_settings
from jizhi.demo import DemoOptions, run_demo
from stages.events import Response
from stages.runtime.kafka import topic_name
from tests.integration.workerkit import (
    PARTITIONS,
    WORLD,
    Background,
    Workers,
    publish,
    unique_pipeline,
    workload,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers import ``examples.*`` from their working directory, as a user's would."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_tables(tmp_path_factory.mktemp("tables"), items=WORLD.items)


def custom_stages(tables: tuple[Path, Path]) -> str:
    block, cats = tables
    return (
        '["ingest", { use = "examples.blocklist:Blocklist", params = { path = "'
        + str(block)
        + '" } }, "features", "embed", "score", { use = "examples.diversity:CapPerCategory", '
        + 'params = { categories = "'
        + str(cats)
        + '", max_per_category = 2 } }, "rank"]'
    )


def read_all(bootstrap: str, topic: str) -> list[Response]:
    """Every record of ``topic`` from the beginning, decoded as answers."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[Response] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 30
    while len(at_end) < PARTITIONS and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            out.append(msgspec.json.decode(msg.value(), type=Response))
    consumer.close()
    return out


def test_a_custom_stage_between_score_and_rank_answers_as_in_one_process(
    kafka_bootstrap: str, world_dir: Path, tmp_path: Path, tables: tuple[Path, Path]
) -> None:
    """The blocklist after ingest and the diversity re-ranker between score and rank, each in a
    different worker process, give the very answers the same stages give in one process."""
    workers = Workers(
        kafka_bootstrap,
        unique_pipeline("custom"),
        world_dir,
        tmp_path,
        stages=custom_stages(tables),
    )
    try:
        procs = [
            workers.start("ingest,blocklist,features"),
            workers.start("embed,score"),
            workers.start("diversity,rank"),
        ]
        for p in procs:
            p.wait_assigned()
        requests, rate = 1200, 600.0
        got = publish(kafka_bootstrap, workers.pipeline, requests, rate, keep_responses=True)
        s = got.summary
        assert (s["answered"], s["ok"], s["duplicates"], s["dead_lettered"]) == (
            requests,
            requests,
            0,
            0,
        ), f"{s}\n{workers.logs()}"
        stages = ["ingest", "blocklist", "features", "embed", "score", "diversity", "rank"]
        assert all(set(r.stage_ms) == set(stages) for r in got.tally.responses)
        for p in procs:
            assert p.terminate() == 0, workers.logs()
    finally:
        workers.close()

    demo = run_demo(
        DemoOptions(
            world=WORLD,
            workload=workload(requests),
            rate=rate,
            settings=load_settings(workers.config),
            world_root=world_dir,
            progress=False,
            keep_responses=True,
        )
    )
    want = {r.request_id: r for r in demo.tally.responses}
    assert len(want) == requests and all(r.status == "ok" for r in want.values())
    blocked = set(np.loadtxt(tables[0], skiprows=1, dtype=np.int64).tolist())
    cut = len(got.prefix) + 1
    for r in got.tally.responses:
        w = want[r.request_id[cut:]]
        assert r.items == w.items, r.request_id
        np.testing.assert_allclose(r.scores, w.scores, rtol=1e-5, atol=1e-6)
        assert not blocked & set(r.items)


def test_two_services_share_workers_and_no_answer_crosses(
    kafka_bootstrap: str, world_dir: Path, tmp_path: Path, tables: tuple[Path, Path]
) -> None:
    """Two services with different stages and deadlines, each stage of both hosted by the same
    two worker processes: every request of each is answered once, on its own responses topic."""
    home, promo = unique_pipeline("home"), unique_pipeline("promo")
    fleet = f"""
[[pipelines]]
name = "{home}"
priority = 10
default_timeout_ms = 60000
stages = {custom_stages(tables)}

[[pipelines]]
name = "{promo}"
priority = 1
default_timeout_ms = 30000
"""
    workers = Workers(kafka_bootstrap, home, world_dir, tmp_path, pipelines=fleet)
    try:
        front = workers.start(f"{home}:ingest,blocklist,features,embed {promo}:ingest,features")
        back = workers.start(f"{home}:score,diversity,rank {promo}:embed,score,rank")
        for p in (front, back):
            p.wait_assigned()
        requests = 800
        runs = {
            name: Background(
                lambda name=name: publish(  # type: ignore[misc]
                    kafka_bootstrap, name, requests, 300.0, keep_responses=True
                )
            )
            for name in (home, promo)
        }
        results = {name: run.result(180) for name, run in runs.items()}
        for name, got in results.items():
            s = got.summary
            assert (s["answered"], s["ok"], s["duplicates"], s["unanswered"]) == (
                requests,
                requests,
                0,
                0,
            ), f"{name}: {s}\n{workers.logs()}"
        for p in (front, back):
            assert p.terminate() == 0, workers.logs()
    finally:
        workers.close()

    # Each responses topic holds only its own service's answers, shaped by its own stages.
    for name, extra in ((home, {"blocklist", "diversity"}), (promo, set())):
        answers = read_all(kafka_bootstrap, topic_name(name, "responses"))
        mine = results[name].prefix
        other = results[promo if name == home else home].prefix
        measured = [r for r in answers if not r.request_id.startswith("warmup-")]
        assert len(measured) >= requests
        assert all(r.request_id.startswith(mine + "-") for r in measured)
        assert not any(other in r.request_id for r in answers)
        stages = {"ingest", "features", "embed", "score", "rank"} | extra
        assert all(set(r.stage_ms) == stages for r in answers)
