"""The Kubernetes actuator at its boundary: the official client against a fake API server that
records every request (no cluster; the server speaks the scale subresource's JSON)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

kubernetes = pytest.importorskip("kubernetes")

from allocator.actuators.kubernetes import KubernetesActuator  # noqa: E402
from allocator.errors import ActuatorError  # noqa: E402

PREFIX = "/apis/apps/v1/namespaces/jizhi/deployments/"


class FakeApi(BaseHTTPRequestHandler):
    deployments: ClassVar[dict[str, dict[str, int]]] = {}
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

    def do_GET(self) -> None:
        self.log.append(("GET", self.path, "", None))
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
def api() -> Iterator[tuple[Any, type[FakeApi]]]:
    FakeApi.deployments = {"jizhi-score": {"spec": 3, "status": 2}}
    FakeApi.log = []
    FakeApi.fail_with = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = kubernetes.client.Configuration()
    conf.host = f"http://127.0.0.1:{server.server_address[1]}"
    apps = kubernetes.client.AppsV1Api(kubernetes.client.ApiClient(conf))
    try:
        yield apps, FakeApi
    finally:
        server.shutdown()


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
