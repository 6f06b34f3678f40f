"""The compose actuator at its boundary: a fake ``docker`` executable (a Python script written
into tmp_path) that records its argv and cwd, answers ``config --services``, ``ps --format json``
(in either format) and ``up --scale`` from a state file, and fails on demand with the CLI's own
messages. No Docker and no broker needed, so it runs in the unit pass; every call starts that
process, hence the ``processes`` marker."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from allocator.actuators.compose import ComposeActuator, worker_service
from allocator.errors import ActuatorError, AllocatorConfigError
from stages.registry import DEFAULT_STAGES

pytestmark = pytest.mark.processes

COMPOSE_FILE = Path(__file__).resolve().parents[3] / "compose" / "docker-compose.yml"

FAKE_DOCKER = """#!{python}
import json, os, sys, time
from pathlib import Path

here = Path(__file__).parent
state = json.loads((here / "state.json").read_text())
args = sys.argv[1:]
with (here / "calls.jsonl").open("a") as fh:
    fh.write(json.dumps({{"argv": args, "cwd": os.getcwd()}}) + "\\n")
time.sleep(state.get("sleep", 0))
if state.get("fail"):
    sys.stderr.write(state["fail"]["stderr"])
    sys.exit(state["fail"]["rc"])
assert args[0] == "compose", args
i = 1
while args[i] in ("-p", "-f"):
    i += 2
verb, rest = args[i], args[i + 1 :]
containers = state["containers"]
if verb == "config":
    print("\\n".join(state.get("services") or containers))
elif verb == "up":
    service, n = rest[rest.index("--scale") + 1].split("=")
    containers[service] = ["running"] * int(n)
    (here / "state.json").write_text(json.dumps(state))
elif verb == "ps":
    if "raw_ps" in state:
        print(state["raw_ps"])
        sys.exit(0)
    names, skip = [], False
    for a in rest:
        if skip or a in ("--format", "--status"):
            skip = not skip
            continue
        names.append(a)
    rows, port = [], 32768
    for service in names:
        for k, st in enumerate(containers.get(service, []), 1):
            port += 1
            pubs = [
                {{"URL": url, "TargetPort": 9464, "PublishedPort": port, "Protocol": "tcp"}}
                for url in ("0.0.0.0", "::")
            ] if state.get("published") else [
                {{"URL": "", "TargetPort": 9464, "PublishedPort": 0, "Protocol": "tcp"}}
            ]
            rows.append({{"Name": f"jizhi-{{service}}-{{k}}", "Service": service, "State": st,
                          "Health": "", "Publishers": pubs}})
    if state.get("format") == "array":  # compose < 2.21
        print(json.dumps(rows))
    else:
        for row in rows:
            print(json.dumps(row))
"""


class FakeDocker:
    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.path = self.bin / "docker"
        self.path.write_text(FAKE_DOCKER.format(python=sys.executable))
        self.path.chmod(0o755)
        self.project = root / "project"
        self.project.mkdir()
        self.set(containers={})

    def set(self, **state: Any) -> None:
        (self.bin / "state.json").write_text(json.dumps(state))

    def containers(self, service: str) -> list[str]:
        state = json.loads((self.bin / "state.json").read_text())
        found: list[str] = state["containers"].get(service, [])
        return found

    def calls(self) -> list[list[str]]:
        log = self.bin / "calls.jsonl"
        if not log.exists():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert all(r["cwd"] == str(self.project) for r in rows)
        return [r["argv"] for r in rows]

    def actuator(self, **kw: Any) -> ComposeActuator:
        return ComposeActuator(self.project, docker=str(self.path), **kw)


@pytest.fixture
def docker(tmp_path: Path) -> FakeDocker:
    return FakeDocker(tmp_path)


PS = ["ps", "--format", "json", "--status", "running"]


def up(service: str, n: int) -> list[str]:
    return ["up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}={n}", service]


def test_scales_the_service_and_counts_its_running_containers(docker: FakeDocker) -> None:
    docker.set(containers={"worker-rank": ["running", "running", "restarting"]})
    act = docker.actuator(services={"rank": "worker-rank"}, project="jz", files=["a.yml", "b.yml"])
    assert act.actual("rank") == 2  # the restarting one is no consumer
    act.scale("rank", 4)
    assert act.actual("rank") == 4
    base = ["compose", "-p", "jz", "-f", "a.yml", "-f", "b.yml"]
    assert docker.calls() == [
        [*base, *PS, "worker-rank"],
        [*base, *up("worker-rank", 4)],
        [*base, *PS, "worker-rank"],
    ]


@pytest.mark.parametrize("fmt", ["lines", "array"])
def test_reads_ps_json_lines_and_the_older_array(docker: FakeDocker, fmt: str) -> None:
    docker.set(format=fmt, containers={"worker-rank": ["running"] * 3, "worker-embed-score": []})
    act = docker.actuator(services={"rank": "worker-rank", "score": "worker-embed-score"})
    assert act.actual("rank") == 3
    assert act.actual("score") == 0  # no output at all, or "[]"


def test_unreadable_ps_output_is_not_retried(docker: FakeDocker) -> None:
    docker.set(containers={}, raw_ps="NAME  IMAGE  STATUS")
    with pytest.raises(ActuatorError, match="unexpected output of docker compose ps") as exc:
        docker.actuator(services={"rank": "worker-rank"}).actual("rank")
    assert exc.value.retriable is False


def test_default_services_are_the_compose_files_worker_services(docker: FakeDocker) -> None:
    docker.set(
        services=["kafka", "aerospike", "worker-ingest-features", "worker-embed-score",
                  "worker-rank", "allocator", "publish", "prometheus", "grafana"],
        containers={"worker-ingest-features": ["running"], "worker-embed-score": ["running"] * 2},
    )  # fmt: skip
    act = docker.actuator()
    assert act.actual("features") == 1
    assert act.actual("score") == 2
    assert docker.calls() == [
        ["compose", "config", "--services"],  # once
        ["compose", *PS, "worker-ingest-features"],
        ["compose", *PS, "worker-embed-score"],
    ]
    with pytest.raises(ActuatorError, match=r"runs stage train.*compose\.services") as exc:
        act.scale("train", 1)
    assert exc.value.retriable is False


def test_the_default_names_match_the_real_compose_file() -> None:
    services: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for stage in DEFAULT_STAGES:
        service = worker_service(stage, services)
        assert service is not None, stage
        command = services[service]["command"]
        assert stage in command[command.index("--stages") + 1].split(","), (stage, service)


def test_a_configured_map_names_the_key_for_an_unknown_stage(docker: FakeDocker) -> None:
    with pytest.raises(ActuatorError, match=r"stage embed \(compose.services\)") as exc:
        docker.actuator(services={"rank": "worker-rank"}).actual("embed")
    assert exc.value.retriable is False
    assert docker.calls() == []


def test_stages_sharing_a_service_get_the_larger_ask_without_undoing_each_other(
    docker: FakeDocker,
) -> None:
    svc = "worker-ingest-features"
    docker.set(containers={svc: ["running"] * 2})
    act = docker.actuator(services={"ingest": svc, "features": svc})

    def look(**asks: int) -> int:
        assert act.actual("ingest") == act.actual("features")  # one container, both consumers
        for stage, n in asks.items():  # the reconcile loop asks only where desired != actual
            act.scale(stage, n)
        return len(docker.containers(svc))

    assert look(ingest=3, features=1) == 3  # ingest needs 3; features rides along
    assert look(features=1) == 3  # ingest (silent: content with 3) keeps its consumers
    assert look(ingest=1, features=1) == 1  # both want fewer: now it shrinks
    assert look(features=4) == 4
    scales = [c[c.index("--scale") + 1] for c in docker.calls() if "up" in c]
    assert scales == [f"{svc}={n}" for n in (3, 3, 3, 3, 1, 4)]


DAEMON_DOWN = (
    "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
    "Is the docker daemon running?\n"
)
NO_PLUGIN = "docker: unknown command: docker compose\n\nRun 'docker --help' for more information\n"


@pytest.mark.parametrize(
    ("rc", "stderr", "line", "retriable"),
    [
        (1, DAEMON_DOWN, "Cannot connect to the Docker daemon", True),
        (1, " Container jizhi-worker-rank-1  Running\nno such service: worker-rnak\n",
         "no such service: worker-rnak", False),
        (15, "yaml: line 3: mapping values are not allowed in this context\n", "yaml: line 3",
         False),
        (1, NO_PLUGIN, "docker: unknown command: docker compose", False),
    ],
)  # fmt: skip
def test_a_failed_command_says_where_and_whether_a_retry_helps(
    docker: FakeDocker, rc: int, stderr: str, line: str, retriable: bool
) -> None:
    docker.set(containers={}, fail={"rc": rc, "stderr": stderr})
    act = docker.actuator(services={"rank": "worker-rnak"})
    for call in (lambda: act.actual("rank"), lambda: act.scale("rank", 2)):
        with pytest.raises(ActuatorError) as exc:
            call()
        message = str(exc.value)
        assert f"exited {rc}: {line}" in message
        assert str(docker.project) in message and "worker-rnak" in message
        assert exc.value.retriable is retriable


def test_a_hung_compose_is_retried_next_look(docker: FakeDocker) -> None:
    docker.set(containers={}, sleep=5)
    act = docker.actuator(services={"rank": "worker-rank"}, timeout_s=0.5)
    with pytest.raises(ActuatorError, match=r"timed out after 0.5 s") as exc:
        act.scale("rank", 2)
    assert exc.value.retriable is True


def test_a_missing_docker_binary_is_not_retried(docker: FakeDocker, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "docker"
    act = ComposeActuator(docker.project, services={"rank": "worker-rank"}, docker=str(missing))
    with pytest.raises(ActuatorError, match=f"cannot run {re.escape(str(missing))}") as exc:
        act.actual("rank")
    assert exc.value.retriable is False


def test_docker_is_found_on_path_by_default(
    docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{docker.bin}{os.pathsep}{os.environ['PATH']}")
    docker.set(containers={"worker-rank": ["running"]})
    assert ComposeActuator(docker.project, services={"rank": "worker-rank"}).actual("rank") == 1


def test_endpoints_are_the_published_metrics_ports(docker: FakeDocker) -> None:
    services = {"rank": "worker-rank", "score": "worker-embed-score"}
    running = {"worker-rank": ["running"], "worker-embed-score": ["running"] * 2}
    docker.set(containers=running)
    assert docker.actuator(services=services).endpoints() == []  # in-network scraping: none
    assert docker.calls() == []
    assert docker.actuator(services=services, metrics_port=9464).endpoints() == []  # unpublished
    docker.set(published=True, containers=running)
    urls = docker.actuator(services=services, metrics_port=9464).endpoints()
    assert urls == [f"http://127.0.0.1:{p}/metrics" for p in (32769, 32770, 32771)]  # 0.0.0.0, ::
    assert docker.calls()[-1] == ["compose", *PS, "worker-embed-score", "worker-rank"]
    assert docker.actuator(services=services, metrics_port=9000).endpoints() == []


def test_a_project_dir_that_is_not_there_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AllocatorConfigError, match=r"compose\.project_dir"):
        ComposeActuator(tmp_path / "missing")
