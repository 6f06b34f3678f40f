"""Every dashboard query, run by a real Prometheus against live jizhi processes.

One Prometheus (Debian's ``prometheus`` binary, started here on a free loopback port with a
temporary config and TSDB, scraping every second) scrapes an embedded ``jizhi demo``, two
``jizhi worker`` processes on the session's Kafka broker and a ``jizhi allocator --dry-run``
watching the workers' pipeline (a look every second), while traffic flows. Then each panel's
queries are evaluated through ``/api/v1/query`` with the dashboard variables substituted, once
per pipeline (the demo's and the workers'), and their values checked: a result, no negative
numbers, ratios within [0, 1], quantiles in order; in the Kafka mode also the allocator's
panels against what it must have seen (its stages, their partitions, its decisions' labels).

A query whose metric has no series in a mode (consumer lag in the embedded demo, a metric that
is defined but not yet observed) is listed with the reason, as a warning, and not evaluated; a
query naming a metric that no jizhi metrics module defines fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import pytest

from allocator import policy
from dashboards import build
from tests.integration import workerkit

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_S = 1
RATE_INTERVAL = "10s"  # what $__rate_interval is with a 1 s scrape and a short time range
VALUES = {"stage": ".+", "table": ".+", "tier": ".+", "__rate_interval": RATE_INTERVAL}
DEMO_RATE = 40.0
KAFKA_RATE = 30.0
KAFKA_REQUESTS = 360  # 12 s of traffic: enough for the evaluation, short teardown
# The stages the dry-run allocator watches: the first stage of each worker chain, the ones with
# a consumer group (features, score and rank are fed in memory inside a worker).
WORKER_CHAINS = ("ingest,features", "embed,score,rank")
ALLOCATOR_STAGES = ("ingest", "embed")
ALLOCATOR_CONFIG = f"""
stages = {json.dumps(list(ALLOCATOR_STAGES))}
interval_s = 1.0
"""
_ALLOCATOR_ONLY = "exported by `jizhi allocator` only, which runs against the Kafka pipeline"
_REMOTE_BACKEND = (
    "exported by a remote store backend (Aerospike) only; these pipelines use the embedded store"
)

# Why a metric a module defines may have no series in a mode; anything else absent is a failure.
ABSENT_REASONS = {
    "jizhi_consumer_lag": "exported by Kafka workers only (no consumer in the embedded demo)",
    "jizhi_kafka_delivery_errors_total": "a series appears only after a failed delivery",
    "jizhi_request_budget_seconds": "defined in stages.metrics but nothing observes it yet",
    "jizhi_ingest_admission_rate": "set by Kafka ingest workers from the control topic; the "
    "embedded demo has none",
    "jizhi_allocator_desired_consumers": _ALLOCATOR_ONLY,
    "jizhi_allocator_actual_consumers": _ALLOCATOR_ONLY,
    "jizhi_allocator_partitions": _ALLOCATOR_ONLY,
    "jizhi_allocator_lag": _ALLOCATOR_ONLY,
    "jizhi_allocator_shed_rate": _ALLOCATOR_ONLY,
    "jizhi_allocator_expired_rate": _ALLOCATOR_ONLY,
    "jizhi_allocator_p99_seconds": "set once the allocator scraped answers between two looks",
    "jizhi_allocator_admission_rate": _ALLOCATOR_ONLY,
    "jizhi_allocator_decisions_total": _ALLOCATOR_ONLY,
    "jizhi_allocator_service_rate": "set once a scraped worker has been busy between two looks",
    "jizhi_allocator_errors_total": "a series appears only after a failed look",
    "jizhi_store_backend_up": _REMOTE_BACKEND,
    "jizhi_store_backend_errors_total": _REMOTE_BACKEND,
}
# Metrics whose panels must be evaluated in the Kafka mode.
KAFKA_ONLY = {
    "jizhi_consumer_lag",
    "jizhi_allocator_desired_consumers",
    "jizhi_allocator_actual_consumers",
    "jizhi_allocator_partitions",
    "jizhi_allocator_lag",
    "jizhi_allocator_shed_rate",
    "jizhi_allocator_admission_rate",
    "jizhi_allocator_decisions_total",
}

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus binary is missing (scripts/system-deps installs Debian's package)",
)


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Prometheus:
    url: str

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        body = _get(f"{self.url}/api/v1/{path}?{query}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def series(self, name: str) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.api("series", **{"match[]": name})
        return found


@dataclass
class Live:
    prom: Prometheus
    demo_pipeline: str
    kafka_pipeline: str | None
    kafka_skipped: str
    logs: dict[str, Path] = field(default_factory=dict)

    def tails(self) -> str:
        return "\n".join(
            f"--- {name}\n{path.read_text(errors='replace')[-2000:]}"
            for name, path in self.logs.items()
            if path.exists()
        )


def _start_prometheus(
    tmp: Path, targets: dict[str, list[str]]
) -> tuple[subprocess.Popen[bytes], str]:
    port = workerkit.free_port()
    jobs = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: {json.dumps(addrs)}"
        for job, addrs in targets.items()
        if addrs
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n"
        f"scrape_configs:\n{jobs}\n"
    )
    with (tmp / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{(tmp / 'prometheus.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    raise AssertionError("prometheus did not become ready in 20 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("dashboards")
    world_dir = workerkit.world_root(tmp)
    w = workerkit.WORLD
    world_flags = [
        *("--users", str(w.users), "--items", str(w.items), "--dim", str(w.dim)),
        *("--seed", str(w.seed), "--world-dir", str(world_dir)),
    ]
    env = {**os.environ, "JIZHI_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    logs: dict[str, Path] = {}
    workers: workerkit.Workers | None = None
    background: workerkit.Background | None = None

    # Kafka workers when the session has a broker; the embedded demo either way.
    kafka_pipeline: str | None = None
    kafka_skipped = ""
    bootstrap = ""
    try:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
    except Exception as exc:  # no Java/Maven/broker here: the demo alone still runs
        kafka_skipped = f"no Kafka broker for this session: {exc!r}"[:300]
    demo_port = workerkit.free_port()
    worker_ports = [workerkit.free_port(), workerkit.free_port()] if bootstrap else []
    allocator_port = workerkit.free_port() if bootstrap else None
    prom_proc, prom_url = _start_prometheus(
        tmp,
        {
            "demo": [f"127.0.0.1:{demo_port}"],
            "workers": [f"127.0.0.1:{p}" for p in worker_ports],
            "allocator": [f"127.0.0.1:{allocator_port}"] if allocator_port else [],
        },
    )
    procs.append(prom_proc)
    logs["prometheus"] = tmp / "prometheus.log"
    try:
        logs["demo"] = tmp / "demo.log"
        with logs["demo"].open("wb") as fh:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "jizhi.cli",
                        "demo",
                        "--requests",
                        "100000",
                        "--rate",
                        str(DEMO_RATE),
                        "--metrics-port",
                        str(demo_port),
                        "--no-progress",
                        "--timeout-ms",
                        "1000",
                        *world_flags,
                    ],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        if bootstrap:
            kafka_pipeline = workerkit.unique_pipeline("dash")
            workers = workerkit.Workers(bootstrap, kafka_pipeline, world_dir, tmp)
            for stages, port in zip(WORKER_CHAINS, worker_ports, strict=True):
                worker = workers.start(stages, "--metrics-port", str(port))
                logs[f"worker {stages}"] = worker.log
            for worker in workers.procs:
                worker.wait_assigned(timeout=40)
            # The allocator decides for the workers' pipeline without acting (--dry-run): it
            # reads the same broker's offsets and exports what it wants and why. Started once
            # the workers own their partitions: on topics still electing leaders, its first
            # look fails with NOT_LEADER_FOR_PARTITION, which it does not treat as retriable.
            alloc_config = tmp / "allocator.toml"
            alloc_config.write_text(ALLOCATOR_CONFIG)
            logs["allocator"] = tmp / "allocator.log"
            with logs["allocator"].open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "jizhi.cli",
                            "allocator",
                            *("--bootstrap", bootstrap, "--pipeline", kafka_pipeline),
                            *("--config", str(workers.config)),
                            *("--allocator-config", str(alloc_config)),
                            *("--metrics-port", str(allocator_port), "--dry-run"),
                            *(
                                arg
                                for port in worker_ports
                                for arg in ("--scrape", f"http://127.0.0.1:{port}/metrics")
                            ),
                        ],
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
            pipeline = kafka_pipeline
            background = workerkit.Background(
                lambda: workerkit.publish(
                    bootstrap, pipeline, requests=KAFKA_REQUESTS, rate=KAFKA_RATE
                )
            )
        prom = Prometheus(prom_url)
        _wait_for_traffic(prom, "demo", kafka_pipeline, logs)
        yield Live(prom, "demo", kafka_pipeline, kafka_skipped, logs)
    finally:
        if background is not None:  # the publisher's last requests; it then reads the answers
            with contextlib.suppress(Exception):
                background.result(timeout=KAFKA_REQUESTS / KAFKA_RATE + 10)
        if workers is not None:
            workers.close()
        for proc in reversed(procs):
            _stop(proc)


def _wait_for_traffic(
    prom: Prometheus, demo: str, kafka: str | None, logs: dict[str, Path], timeout: float = 40
) -> None:
    """Until every pipeline has answered requests for a whole rate window, and the workers
    report lag: then every rate() and histogram_quantile() has samples to work with."""
    window = f"[{RATE_INTERVAL}]"
    checks = [f'sum(increase(jizhi_responses_total{{pipeline="{demo}"}}{window}))']
    if kafka:
        checks.append(f'sum(increase(jizhi_responses_total{{pipeline="{kafka}"}}{window}))')
        checks.append(f'count(jizhi_consumer_lag{{pipeline="{kafka}"}})')
        # the allocator has looked at every stage it watches, and decided something
        checks.append(f'count(jizhi_allocator_partitions{{pipeline="{kafka}"}})')
        checks.append(f'count(jizhi_allocator_decisions_total{{pipeline="{kafka}"}})')
    end = time.monotonic() + timeout
    since: float | None = None
    while time.monotonic() < end:
        if all(prom.scalar(c) > 0 for c in checks):
            since = since or time.monotonic()
            if time.monotonic() - since >= 3 * SCRAPE_S:
                return
        time.sleep(0.5)
    tails = "\n".join(f"--- {n}\n{p.read_text(errors='replace')[-1500:]}" for n, p in logs.items())
    raise AssertionError(f"no traffic seen by Prometheus in {timeout}s: {checks}\n{tails}")


# -- evaluation ------------------------------------------------------------------------------

_QUANTILE = re.compile(r"histogram_quantile\((0?\.\d+|1(?:\.0)?),")


@dataclass
class Outcome:
    board: str
    panel: str
    ref: str
    expr: str
    values: list[tuple[dict[str, str], float]] = field(default_factory=list)
    skipped: str = ""


def _substitute(expr: str, pipeline: str) -> str:
    out = expr.replace("$pipeline", pipeline)
    for name in sorted(VALUES, key=len, reverse=True):
        out = out.replace(f"${{{name}}}", VALUES[name]).replace(f"${name}", VALUES[name])
    assert "$" not in out, f"unsubstituted variable in {out}"
    return out


def _present(prom: Prometheus, series: str, pipeline: str) -> bool:
    """Has the metric a series for this pipeline (or any, when it has no pipeline label)?"""
    found = prom.series(series)
    if any("pipeline" in s for s in found):
        found = [s for s in found if s.get("pipeline") == pipeline]
    return bool(found)


def _evaluate(live: Live, pipeline: str) -> list[Outcome]:
    known = build.known_series()
    exported = set(live.prom.api("label/__name__/values"))
    outcomes: list[Outcome] = []
    for board in build.DASHBOARDS:
        rendered = build.render(board)
        for panel, target in build.queries(rendered):
            out = Outcome(board.title, panel["title"], target["refId"], target["expr"])
            outcomes.append(out)
            names = build.metric_names(target["expr"])
            unknown = names - known.keys()
            assert not unknown, f"{board.file} {panel['title']!r}: unknown metrics {unknown}"
            absent = sorted(
                n for n in names if n not in exported or not _present(live.prom, n, pipeline)
            )
            if absent:
                family = {_family(n) for n in absent}
                reasons = [ABSENT_REASONS.get(f, "") for f in sorted(family)]
                assert all(reasons), (
                    f"{board.file} {panel['title']!r}: {absent} have no series for pipeline "
                    f"{pipeline} and no known reason\n{live.tails()}"
                )
                out.skipped = f"no series of {', '.join(absent)}: {'; '.join(reasons)}"
                continue
            result = live.prom.query(_substitute(target["expr"], pipeline))
            out.values = [(r["metric"], float(r["value"][1])) for r in result]
    return outcomes


def _family(series: str) -> str:
    """Series name -> the name ABSENT_REASONS uses (histograms without their suffix)."""
    return re.sub(r"_(bucket|sum|count)$", "", series)


def _check(outcomes: list[Outcome], units: dict[tuple[str, str], str]) -> None:
    problems: list[str] = []
    for o in outcomes:
        if o.skipped:
            continue
        where = f"{o.board} / {o.panel} [{o.ref}] {o.expr}"
        if not o.values:
            problems.append(f"{where}: no data")
            continue
        finite = [v for _, v in o.values if not math.isnan(v)]
        if not finite:
            problems.append(f"{where}: only NaN")
        if any(v < 0 for v in finite):
            problems.append(f"{where}: negative value {min(finite)}")
        if any(math.isinf(v) for v in finite):
            problems.append(f"{where}: infinite value")
        if units[(o.board, o.panel)] == "percentunit" and any(v > 1 for v in finite):
            problems.append(f"{where}: ratio above 1: {max(finite)}")
    # Quantiles of one histogram in one panel: p50 <= p95 <= p99 for every label set.
    by_panel: dict[tuple[str, str, str], list[tuple[float, Outcome]]] = {}
    for o in outcomes:
        quantile = _QUANTILE.search(o.expr)
        if quantile and o.values:
            key = (o.board, o.panel, _QUANTILE.sub("histogram_quantile(Q,", o.expr))
            by_panel.setdefault(key, []).append((float(quantile.group(1)), o))
    for (board, panel, _), group in by_panel.items():
        group.sort(key=lambda qo: qo[0])
        for (q1, lo), (q2, hi) in itertools.pairwise(group):
            low = {json.dumps(m, sort_keys=True): v for m, v in lo.values}
            for m, v in hi.values:
                k = json.dumps(m, sort_keys=True)
                if k in low and not math.isnan(v) and not math.isnan(low[k]) and v < low[k]:
                    problems.append(f"{board} / {panel}: q{q1}={low[k]} > q{q2}={v} for {m}")
    assert not problems, "\n".join(problems)


def _units() -> dict[tuple[str, str], str]:
    return {(d.title, p.title): p.unit for d in build.DASHBOARDS for r in d.rows for p in r.panels}


def _report(mode: str, outcomes: list[Outcome]) -> str:
    lines = [f"dashboard queries in {mode}:"]
    for o in outcomes:
        if o.skipped:
            lines.append(f"  NOT EVALUATED {o.board} / {o.panel} [{o.ref}]: {o.skipped}")
        else:
            shown = ", ".join(
                f"{'/'.join(v for k, v in sorted(m.items()) if k != '__name__') or '-'}={val:.4g}"
                for m, val in o.values[:6]
            )
            lines.append(f"  ok {o.board} / {o.panel} [{o.ref}]: {shown}")
    return "\n".join(lines)


def _values(outcomes: list[Outcome], panel: str, ref: str = "A") -> dict[str, float]:
    """An evaluated query's values by its ``stage`` label (``-`` when it has none)."""
    (o,) = [o for o in outcomes if o.panel == panel and o.ref == ref]
    assert not o.skipped and o.values, f"{panel} [{ref}] was not evaluated: {o.skipped}"
    return {m.get("stage", "-"): v for m, v in o.values}


def _no_degraded_lookups(outcomes: list[Outcome]) -> None:
    """storage.metrics binds jizhi_store_degraded_total{table} with every table's metrics, so
    the panel has a 0 per table while no backend is down (the embedded store never is)."""
    (o,) = [o for o in outcomes if o.panel == "Degraded lookups"]
    assert not o.skipped, o.skipped
    assert {m["table"] for m, _ in o.values} >= {"users", "items"}, o.values
    assert all(v == 0 for _, v in o.values), o.values


def test_every_panel_evaluates_on_the_embedded_demo(live: Live) -> None:
    outcomes = _evaluate(live, live.demo_pipeline)
    print(_report("the embedded demo", outcomes))
    skipped = [o for o in outcomes if o.skipped]
    if skipped:
        warnings.warn(
            "panels not evaluated on the embedded demo:\n"
            + "\n".join(f"{o.board} / {o.panel} [{o.ref}]: {o.skipped}" for o in skipped),
            stacklevel=1,
        )
    _check(outcomes, _units())
    evaluated = {(o.board, o.panel) for o in outcomes if not o.skipped}
    assert ("jizhi / Overview", "Requests/s") in evaluated
    assert ("jizhi / Storage", "Hit ratio per tier") in evaluated
    # Every panel not about Kafka or the allocator's inputs had data.
    for o in skipped:
        assert {_family(n) for n in build.metric_names(o.expr)} & set(ABSENT_REASONS), o
    _no_degraded_lookups(outcomes)


def test_every_panel_evaluates_on_kafka_workers(live: Live) -> None:
    if live.kafka_pipeline is None:
        pytest.skip(live.kafka_skipped)
    outcomes = _evaluate(live, live.kafka_pipeline)
    print(_report("Kafka workers", outcomes))
    skipped = [o for o in outcomes if o.skipped]
    if skipped:
        warnings.warn(
            "panels not evaluated on Kafka workers:\n"
            + "\n".join(f"{o.board} / {o.panel} [{o.ref}]: {o.skipped}" for o in skipped),
            stacklevel=1,
        )
    _check(outcomes, _units())
    for o in skipped:
        names = {_family(n) for n in build.metric_names(o.expr)}
        assert not names & KAFKA_ONLY, f"{o.panel}: Kafka-mode metric missing: {o.skipped}"
    lag = [o for o in outcomes if o.panel == "Consumer lag by partition"]
    assert lag and lag[0].values, "no consumer lag series"
    stages = {m["stage"] for m, _ in lag[0].values}
    assert stages == {"ingest", "embed"}, stages  # each worker chain's first stage consumes
    consumers = next(o for o in outcomes if o.panel == "Processes running each stage")
    every_stage = ("ingest", "features", "embed", "score", "rank")
    assert {m["stage"]: v for m, v in consumers.values} == dict.fromkeys(every_stage, 1.0)
    _no_degraded_lookups(outcomes)

    # The allocator's board, against what a --dry-run allocator watching this pipeline's two
    # consumer groups must have seen and decided.
    watched = set(ALLOCATOR_STAGES)
    desired = _values(outcomes, "Desired vs actual consumers", "A")
    assert desired.keys() == watched and all(v >= 0 and v == int(v) for v in desired.values())
    actual = _values(outcomes, "Desired vs actual consumers", "B")
    assert actual == dict.fromkeys(watched, 0.0), actual  # --dry-run: it started nobody
    exporting = _values(outcomes, "Desired vs actual consumers", "C")
    assert exporting == dict.fromkeys(every_stage, 1.0), exporting
    partitions = _values(outcomes, "Partitions per stage")
    assert partitions == dict.fromkeys(watched, float(workerkit.PARTITIONS)), partitions
    allocator_lag = _values(outcomes, "Lag per stage")
    assert allocator_lag.keys() == watched and all(v >= 0 for v in allocator_lag.values())
    (admission,) = _values(outcomes, "Admission limit", "A").values()
    (shed,) = _values(outcomes, "Shed rate", "A").values()
    assert admission >= 0 and shed >= 0
    (decisions,) = [o for o in outcomes if o.panel == "Decisions by stage, action and reason"]
    assert decisions.values, "no allocator decision in the window"
    reasons = {
        *get_args(policy.ConsumerReason),
        *get_args(policy.PartitionReason),
        *get_args(policy.ShedReason),
    }
    for labels, _ in decisions.values:
        assert labels.get("stage") in watched, labels
        assert labels.get("action") in {"consumers", "partitions", "assignment", "admission"}
        assert labels.get("reason") in reasons, labels
    # desired != actual (0) at every look of a dry run, so each stage's consumers are decided
    decided = {m["stage"] for m, _ in decisions.values if m["action"] == "consumers"}
    assert decided >= {s for s, n in desired.items() if n > 0}, decisions.values
