"""compose/ checked without Docker: the files parse, everything they mount or reference exists,
and the ports, hosts and commands agree with each other and with jizhi's own CLI and settings.

(``docker compose config`` itself, which needs the compose CLI, runs in tests/compose/.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import build
from jizhi.cli import build_parser
from jizhi.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_FILE = COMPOSE_DIR / "prometheus" / "prometheus.yml"
AEROSPIKE_CONF = COMPOSE_DIR / "aerospike" / "aerospike.conf"  # another engineer's file
JIZHI_IMAGE = "jizhi:local"

TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "ports", "volumes", "depends_on",
    "healthcheck", "restart", "profiles", "hostname", "stop_grace_period", "ulimits", "labels",
    "networks", "expose", "user", "working_dir", "deploy", "container_name",
}  # fmt: skip
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _jizhi_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image") == JIZHI_IMAGE}


def _argv(service: dict[str, Any]) -> list[str]:
    """The jizhi arguments a service runs: the image's entrypoint is ``jizhi``."""
    entry = service.get("entrypoint") or ["jizhi"]
    assert entry[0] == "jizhi", entry
    return [*entry[1:], *(service.get("command") or [])]


def _flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out.append((source, target))
    return out


def _commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


# -- the compose file itself -------------------------------------------------------------------


def test_compose_file_shape(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert {k for k in compose if not k.startswith("x-")} <= TOP_LEVEL
    assert "version" not in compose, "the Compose Specification has no version key"
    expected = {"kafka", "aerospike", "prometheus", "grafana", "allocator", "publish"}
    assert expected <= services.keys()
    assert len([n for n in services if n.startswith("worker-")]) >= 3
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, name
        for port in svc.get("ports", []):
            assert re.fullmatch(r"((\d+\.){3}\d+:)?(\d*:)?\d+", str(port)), f"{name}: {port!r}"
        assert isinstance(svc.get("command", []), list), f"{name}: exec-form command"


def test_every_jizhi_service_builds_the_repo_image(services: dict[str, dict[str, Any]]) -> None:
    jizhi = _jizhi_services(services)
    assert jizhi
    for name, svc in jizhi.items():
        build_spec = svc["build"]
        context = (COMPOSE_DIR / build_spec["context"]).resolve()
        assert context == ROOT, name
        assert (context / build_spec["dockerfile"]).is_file(), name


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"pip install \.", dockerfile)
    assert re.search(r'^ENTRYPOINT \["jizhi"\]', dockerfile, re.M)
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    needed = {"pyproject.toml", "README.md", "jizhi", "stages", "storage", "allocator"}
    assert not ignored & needed, f".dockerignore drops what pip install . needs: {ignored & needed}"


def test_depends_on_names_defined_services_with_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    graph: dict[str, set[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on with conditions, not a list"
        graph[name] = set(deps)
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            assert spec["condition"] in CONDITIONS, f"{name} -> {dep}"
            if spec["condition"] == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dep} has no check"
    # No cycles: repeatedly remove services whose dependencies are all removed.
    left = dict(graph)
    while left:
        ready = [n for n, deps in left.items() if not deps & left.keys()]
        assert ready, f"depends_on cycle among {sorted(left)}"
        for n in ready:
            del left[n]


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    def healthy_deps(name: str) -> set[str]:
        deps = services[name].get("depends_on", {})
        return {d for d, spec in deps.items() if spec["condition"] == "service_healthy"}

    for name in services:
        if name.startswith("worker-") or name == "allocator":
            assert "kafka" in healthy_deps(name), f"{name} must wait for a healthy broker"
    workers = {n for n in services if n.startswith("worker-")}
    assert workers <= healthy_deps("allocator")
    assert workers <= healthy_deps("publish")
    assert "prometheus" in healthy_deps("grafana")
    store_users = [n for n in workers if {"features", "embed"} & set(n.split("-"))]
    assert store_users and all("aerospike" in healthy_deps(n) for n in store_users)
    for name, svc in services.items():
        if name != "publish":
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_every_mounted_file_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(compose.get("volumes") or {})
    missing_other: list[str] = []
    for name, svc in services.items():
        for source, _ in _mounts(svc):
            if not source.startswith((".", "/")):
                assert source in named, f"{name}: volume {source} is not declared"
                continue
            path = (COMPOSE_DIR / source).resolve()
            if path == AEROSPIKE_CONF.resolve() and not path.exists():
                missing_other.append(str(path.relative_to(ROOT)))
                continue
            assert path.exists(), f"{name} mounts {source}, which is not in the repo"
    if missing_other:
        pytest.xfail(f"not written yet by its owner: {missing_other}")


def test_aerospike_mounts_the_hybrid_namespace_config(
    services: dict[str, dict[str, Any]],
) -> None:
    svc = services["aerospike"]
    mounts = dict(_mounts(svc))
    target = mounts.get("./aerospike/aerospike.conf")
    assert target is not None
    assert _flag(svc["command"], "--config-file") == target


# -- ports, hosts and commands agree ----------------------------------------------------------


def test_jizhi_commands_parse_with_the_cli(services: dict[str, dict[str, Any]]) -> None:
    known = _commands()
    pending = []
    for name, svc in _jizhi_services(services).items():
        argv = _argv(svc)
        if argv[0] not in known:
            pending.append(f"{name}: `jizhi {argv[0]}` does not exist yet")
            continue
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                build_parser().parse_args(argv)
            except SystemExit:
                pytest.fail(f"{name}: jizhi {' '.join(argv)}: {err.getvalue().strip()}")
    if pending:
        pytest.xfail("; ".join(pending))


def test_settings_file_loads_and_agrees(services: dict[str, dict[str, Any]]) -> None:
    settings = load_settings(COMPOSE_DIR / "jizhi.toml")
    for name, svc in _jizhi_services(services).items():
        argv = _argv(svc)
        assert ("./jizhi.toml", "/etc/jizhi/jizhi.toml") in _mounts(svc), name
        if argv[0] in ("worker", "allocator"):
            assert _flag(argv, "--config") == "/etc/jizhi/jizhi.toml", name
            port = _flag(argv, "--metrics-port")
            assert port is not None and int(port) == settings.metrics_port, name
        bootstrap = _flag(argv, "--bootstrap")
        assert bootstrap == settings.kafka.bootstrap, f"{name}: {bootstrap}"


def test_metrics_are_reachable_from_another_container() -> None:
    """A worker's /metrics must listen beyond loopback for Prometheus's container to scrape it."""
    settings = load_settings(COMPOSE_DIR / "jizhi.toml")
    assert settings.metrics_addr in ("0.0.0.0", "::")


def test_kafka_listeners_match_what_clients_use(services: dict[str, dict[str, Any]]) -> None:
    env = services["kafka"]["environment"]
    listeners = dict(
        item.split("://") for item in env["KAFKA_LISTENERS"].split(",")
    )  # name -> ":port"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocol_map = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    protocols = dict(item.split(":") for item in protocol_map.split(","))
    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for listener, hostport in advertised.items():
        assert listeners[listener].rsplit(":", 1)[1] == hostport.rsplit(":", 1)[1], listener
    voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    node, _, where = voter.partition("@")
    assert int(node) == int(env["KAFKA_NODE_ID"])
    assert where == f"kafka:{listeners[env['KAFKA_CONTROLLER_LISTENER_NAMES']].rsplit(':', 1)[1]}"
    # Containers reach the broker on the internal listener; the host on the published one.
    internal = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert internal.split(":")[0] in services
    assert load_settings(COMPOSE_DIR / "jizhi.toml").kafka.bootstrap == internal
    for name, svc in _jizhi_services(services).items():
        bootstrap = _flag(_argv(svc), "--bootstrap")
        assert bootstrap == internal, f"{name} uses {bootstrap}, the broker advertises {internal}"
    published = {str(p).split(":")[0] for p in services["kafka"].get("ports", [])}
    host_side = [hp for hp in advertised.values() if hp.startswith("localhost:")]
    assert host_side and all(hp.split(":")[1] in published for hp in host_side)


def test_prometheus_scrapes_every_jizhi_service_on_its_metrics_port(
    services: dict[str, dict[str, Any]],
) -> None:
    prom = _yaml(PROMETHEUS_FILE)
    mounts = dict(_mounts(services["prometheus"]))
    config_target = mounts["./prometheus/prometheus.yml"]
    assert _flag(services["prometheus"]["command"], "--config.file") == config_target
    scraped: dict[str, int] = {}
    for job in prom["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd.get("type", "A") == "A"
            for host in sd["names"]:
                scraped[host] = int(sd["port"])
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                if host != "localhost":
                    scraped[host] = int(port)
    for host in scraped:
        assert host in services, f"Prometheus scrapes {host}, which is no compose service"
    expected = {
        name: int(_flag(_argv(svc), "--metrics-port") or 0)
        for name, svc in _jizhi_services(services).items()
        if _argv(svc)[0] in ("worker", "allocator")
    }
    assert expected, "no worker or allocator service"
    for name, port in expected.items():
        assert scraped.get(name) == port, f"{name} serves metrics on {port}, scraped: {scraped}"
    interval = prom["global"]["scrape_interval"]
    ds = _yaml(ROOT / "dashboards/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert ds["jsonData"]["timeInterval"] == interval, "Grafana's $__rate_interval needs it"


def test_grafana_provisioning_matches_the_stack(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = dict(_mounts(grafana))
    assert mounts["../dashboards/provisioning"] == "/etc/grafana/provisioning"
    dashboards_dir = mounts["../dashboards"]
    provider = _yaml(ROOT / "dashboards/provisioning/dashboards/jizhi.yaml")["providers"][0]
    assert provider["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/")
    assert (ROOT / "dashboards" / home.removeprefix(dashboards_dir + "/")).is_file()
    ds = _yaml(ROOT / "dashboards/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert ds["uid"] == build.DATASOURCE_UID
    m = re.fullmatch(r"http://([\w.-]+):(\d+)/?", ds["url"])
    assert m, ds["url"]
    host, port = m.group(1), int(m.group(2))
    assert host in services and services[host]["image"].startswith("prom/prometheus")
    listen = _flag(services[host]["command"], "--web.listen-address") or ":9090"
    assert int(listen.rsplit(":", 1)[1]) == port
    assert any(str(p).endswith(f":{port}") for p in services[host].get("ports", []))
    assert any(str(p).endswith(":3000") for p in grafana.get("ports", []))


def test_the_host_allocator_config_acts_on_these_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    """compose/allocator.toml: the compose actuator, every stage mapped to the one worker service
    running it, and every worker publishing the metrics port it reads service rates from."""
    from allocator.actuators.compose import worker_service  # noqa: PLC0415
    from jizhi.allocator_cli import load  # noqa: PLC0415

    s = load(COMPOSE_DIR / "allocator.toml")
    assert s.actuator == "compose"
    assert (ROOT / s.compose.project_dir).resolve() == COMPOSE_DIR
    for stage in s.stages:
        service = worker_service(stage, services)
        assert service is not None, stage
        argv = _argv(services[service])
        assert stage in (_flag(argv, "--stages") or "").split(","), (stage, service)
        assert _flag(argv, "--metrics-port") == str(s.compose.metrics_port)
        assert f"127.0.0.1::{s.compose.metrics_port}" in services[service]["ports"]
