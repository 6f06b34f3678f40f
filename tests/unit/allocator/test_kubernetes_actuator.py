"""The Kubernetes actuator at its boundary: the official client against a fake API server that
records every request (no cluster; the server speaks the scale subresource's JSON)."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

kubernetes = pytest.importorskip("kubernetes")

from allocator.actuators.kubernetes import KubernetesActuator  # noqa: E402
from allocator.errors import ActuatorError  # noqa: E402

PREFIX = "/apis/apps/v1/namespaces/jizhi/deployments/"
PODS = "/api/v1/namespaces/jizhi/pods"


class FakeApi(BaseHTTPRequestHandler):
    deployments: ClassVar[dict[str, dict[str, int]]] = {}
    pods: ClassVar[list[dict[str, Any]]] = []
    """(labels, phase, podIP) of the namespace's pods, as the API lists them."""
    log: ClassVar[list[tuple[str, str, str, Any]]] = []
    fail_with: int | None = None

    def _scale(self, name: str) -> dict[str, Any]:
        d = self.deployments[name]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": "jizhi"},
            "spec": {"replicas": d["spec"]},
            "status": {"replicas": d["status"], "selector": f"app={name}"},
        }

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> str | None:
        if self.fail_with is not None:
            self._reply(self.fail_with, {"kind": "Status", "code": self.fail_with})
            return None
        if not (self.path.startswith(PREFIX) and self.path.endswith("/scale")):
            self._reply(404, {"kind": "Status", "code": 404})
            return None
        name = self.path[len(PREFIX) : -len("/scale")]
        if name not in self.deployments:
            self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            return None
        return name

    def _list_pods(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        want = dict(kv.split("=", 1) for kv in query.get("labelSelector", [""])[0].split(",") if kv)
        items = [
            {
                "metadata": {"name": f"pod-{i}", "labels": p["labels"]},
                "status": {"phase": p["phase"], "podIP": p.get("ip")},
            }
            for i, p in enumerate(self.pods)
            if all(p["labels"].get(k) == v for k, v in want.items())
        ]
        self._reply(200, {"kind": "PodList", "apiVersion": "v1", "items": items})

    def do_GET(self) -> None:
        self.log.append(("GET", self.path, "", None))
        if self.fail_with is None and urlparse(self.path).path == PODS:
            self._list_pods()
            return
        name = self._route()
        if name is not None:
            self._reply(200, self._scale(name))

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.log.append(("PATCH", self.path, self.headers["Content-Type"], body))
        name = self._route()
        if name is not None:
            self.deployments[name]["spec"] = body["spec"]["replicas"]
            self._reply(200, self._scale(name))

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    """The fake API server's URL."""
    FakeApi.deployments = {"jizhi-score": {"spec": 3, "status": 2}}
    FakeApi.pods = []
    FakeApi.log = []
    FakeApi.fail_with = None
    http = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}"
    finally:
        http.shutdown()


@pytest.fixture
def api(server: str) -> tuple[Any, type[FakeApi]]:
    conf = kubernetes.client.Configuration()
    conf.host = server
    return kubernetes.client.AppsV1Api(kubernetes.client.ApiClient(conf)), FakeApi


def test_reads_running_replicas_and_patches_the_scale(api: tuple[Any, type[FakeApi]]) -> None:
    apps, fake = api
    act = KubernetesActuator(apps, namespace="jizhi", deployments={"score": "jizhi-score"})
    assert act.actual("score") == 2  # status.replicas: pods running, not asked for
    act.scale("score", 7)
    method, path, ctype, body = fake.log[-1]
    assert (method, path) == ("PATCH", PREFIX + "jizhi-score/scale")
    assert body == {"spec": {"replicas": 7}}
    assert "patch" in ctype
    assert fake.deployments["jizhi-score"]["spec"] == 7


def test_errors_say_whether_a_retry_helps(api: tuple[Any, type[FakeApi]]) -> None:
    apps, fake = api
    act = KubernetesActuator(
        apps, namespace="jizhi", deployments={"score": "jizhi-score", "rank": "missing"}
    )
    with pytest.raises(ActuatorError, match="missing") as missing:
        act.scale("rank", 2)
    assert missing.value.retriable is False
    fake.fail_with = 503
    with pytest.raises(ActuatorError, match="503") as busy:
        act.actual("score")
    assert busy.value.retriable is True
    with pytest.raises(ActuatorError, match="no deployment configured") as unknown:
        act.actual("embed")
    assert unknown.value.retriable is False


def test_endpoints_are_the_running_pods_of_each_deployment(server: str, tmp_path: Path) -> None:
    """Built as `jizhi allocator` builds it, from a kubeconfig (here pointing at the fake
    server): the scale's selector finds the pods; only running ones with an IP are scraped."""
    from jizhi.allocator_cli import _actuator, load  # noqa: PLC0415

    FakeApi.pods = [
        {"labels": {"app": "jizhi-score"}, "phase": "Running", "ip": "10.0.0.7"},
        {"labels": {"app": "jizhi-score"}, "phase": "Pending"},
        {"labels": {"app": "jizhi-rank"}, "phase": "Running", "ip": "10.0.0.9"},
    ]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
                "current-context": "fake",
            }
        )
    )
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        'actuator = "kubernetes"\nstages = ["score"]\n'
        f'[kubernetes]\nnamespace = "jizhi"\nkubeconfig = "{kubeconfig}"\n'
    )
    act = _actuator(load(cfg), argparse.Namespace(bootstrap="h:1", config=None), "demo")
    assert isinstance(act, KubernetesActuator)
    assert act.actual("score") == 2
    assert act.endpoints() == ["http://10.0.0.7:9464/metrics"]
    assert any("labelSelector=app%3Djizhi-score" in path for _, path, _, _ in FakeApi.log)


def test_a_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    from allocator.errors import AllocatorConfigError  # noqa: PLC0415

    with pytest.raises(AllocatorConfigError, match="kubeconfig"):
        KubernetesActuator.from_config(
            namespace="jizhi",
            deployments={"score": "jizhi-score"},
            kubeconfig=str(tmp_path / "none"),
        )
