"""The compose stack, brought up for real: requests published from the host are answered, every
jizhi process is a Prometheus target that is up, and Grafana serves the provisioned dashboards.

Needs Docker (daemon and compose plugin); skips with the reason otherwise. The first run builds
the image and generates the synthetic world in the workers' volume, which takes minutes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards import build
from jizhi.publish import PublishOptions, run_publish
from jizhi.synth import Workload, WorldSpec
from tests.compose.conftest import compose_cli_missing, docker_daemon_missing

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
KAFKA_FROM_HOST = "localhost:9094"  # the EXTERNAL listener the kafka service publishes
PROMETHEUS = "http://localhost:9090"
GRAFANA = "http://localhost:3000"


def _get(url: str, *, auth: tuple[str, str] | None = None, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _eventually(what: str, check: Any, timeout: float) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(2)
    raise AssertionError(f"{what} not true in {timeout}s; last: {last!r}")


def test_compose_config_is_valid() -> None:
    """`docker compose config` validates the file against the Compose Specification."""
    reason = compose_cli_missing()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.yml", "config", "--quiet"],
        cwd=COMPOSE_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stack() -> Iterator[Any]:
    reason = docker_daemon_missing() or compose_cli_missing()
    if reason:
        pytest.skip(reason)
    from testcontainers.compose import DockerCompose  # noqa: PLC0415 - only with Docker

    compose: Any = DockerCompose(
        COMPOSE_DIR, compose_file_name="docker-compose.yml", build=True, wait=True
    )
    compose.start()
    try:
        yield compose
    finally:
        stdout, stderr = compose.get_logs()
        print(stdout[-5000:], stderr[-5000:])
        compose.stop(down=True)


def test_requests_published_from_the_host_are_answered(stack: Any) -> None:
    result = run_publish(
        PublishOptions(
            bootstrap=KAFKA_FROM_HOST,
            world=WorldSpec(),  # the workers' default world
            workload=Workload(requests=300, timeout_ms=5_000.0),
            rate=100.0,
            answer_timeout_s=60.0,
            progress=False,
        )
    )
    summary = result.summary
    assert summary["answered"] == summary["requests"] == 300, summary
    assert summary["duplicates"] == 0, summary
    assert summary["ok"] > 0, summary


def test_prometheus_scrapes_every_jizhi_process(stack: Any) -> None:
    def targets() -> list[dict[str, Any]] | None:
        active: list[dict[str, Any]] = _get(f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        jizhi = [t for t in active if t["labels"]["job"].startswith("jizhi-")]
        services = {t["labels"].get("service") for t in jizhi}
        wanted = {"worker-ingest-features", "worker-embed-score", "worker-rank", "allocator"}
        ok = wanted <= services and all(t["health"] == "up" for t in jizhi)
        return jizhi if ok else None

    found = _eventually("every jizhi target up", targets, timeout=90)
    assert found
    names = _get(f"{PROMETHEUS}/api/v1/label/__name__/values")["data"]
    assert "jizhi_stage_events_total" in names


def test_grafana_serves_the_provisioned_dashboards(stack: Any) -> None:
    health = _eventually("grafana healthy", lambda: _get(f"{GRAFANA}/api/health"), timeout=60)
    assert health["database"] == "ok"
    found = _get(f"{GRAFANA}/api/search?tag={build.TAG}")
    assert {d["uid"] for d in found} == {d.uid for d in build.DASHBOARDS}
    for d in build.DASHBOARDS:
        model = _get(f"{GRAFANA}/api/dashboards/uid/{d.uid}")
        assert model["meta"]["provisioned"] is True
        assert len(model["dashboard"]["panels"]) == len(build.render(d)["panels"])
    ds = _get(
        f"{GRAFANA}/api/datasources/uid/{build.DATASOURCE_UID}/health", auth=("admin", "admin")
    )
    assert ds["status"] == "OK", ds
