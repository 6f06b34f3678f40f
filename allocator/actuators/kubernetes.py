"""The Kubernetes actuator: one Deployment per stage, its replicas driven through the scale
subresource (the same call ``kubectl scale`` and the HPA make), with the official client.

Only ``spec.replicas`` is written; pods, rollouts and disruption budgets stay Kubernetes'
business. "Actual" is the scale's ``status.replicas`` (pods the Deployment runs now), so a
stage whose pods cannot be scheduled shows desired > actual on the allocator's dashboard.

Endpoints, for the service rates: with ``metrics_port``, every running pod the scale's
``status.selector`` selects, at ``http://<pod IP>:<port>/metrics`` — reachable from an
allocator running in the cluster (pod IPs are not routable from outside it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from allocator.errors import ActuatorError, AllocatorConfigError


class KubernetesActuator:
    def __init__(
        self,
        apps: Any,
        *,
        namespace: str,
        deployments: Mapping[str, str],
        endpoints: Callable[[], list[str]] | None = None,
        core: Any = None,
        metrics_port: int | None = None,
    ) -> None:
        """``apps``: a ``kubernetes.client.AppsV1Api``; ``deployments``: stage -> name;
        ``core``: a ``CoreV1Api`` to find the pods' metrics endpoints on ``metrics_port``
        (``endpoints`` overrides that with a callable of its own)."""
        self._apps = apps
        self._ns = namespace
        self._deployments = dict(deployments)
        self._endpoints = endpoints
        self._core = core
        self._port = metrics_port

    @classmethod
    def from_config(
        cls,
        *,
        namespace: str,
        deployments: Mapping[str, str],
        in_cluster: bool = False,
        kubeconfig: str | None = None,
        metrics_port: int | None = None,
    ) -> KubernetesActuator:
        """Credentials from the pod's service account or a kubeconfig (``kubeconfig``, else
        the client's default: ``KUBECONFIG`` or ~/.kube/config), never flags."""
        from kubernetes import client, config  # noqa: PLC0415 - optional dependency

        try:
            if in_cluster:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except Exception as exc:  # the loaders raise ConfigException, TypeError, OSError
            where = "the pod's service account" if in_cluster else "the kubeconfig"
            raise AllocatorConfigError(f"kubernetes: cannot load {where}: {exc}") from exc
        return cls(
            client.AppsV1Api(),
            namespace=namespace,
            deployments=deployments,
            core=client.CoreV1Api(),
            metrics_port=metrics_port,
        )

    def _name(self, stage: str) -> str:
        try:
            return self._deployments[stage]
        except KeyError:
            raise ActuatorError(
                f"no deployment configured for stage {stage} (kubernetes.deployments)",
                retriable=False,
            ) from None

    def _fail(self, what: str, exc: Exception) -> ActuatorError:
        status = getattr(exc, "status", None)
        retriable = status is None or status == 429 or status >= 500
        return ActuatorError(
            f"{what} in namespace {self._ns}: HTTP {status} {getattr(exc, 'reason', exc)}",
            retriable=retriable,
        )

    def actual(self, stage: str) -> int:
        name = self._name(stage)
        try:
            scale = self._apps.read_namespaced_deployment_scale(name, self._ns)
        except Exception as exc:
            raise self._fail(f"reading the scale of deployment {name}", exc) from exc
        return int(getattr(scale.status, "replicas", 0) or 0)

    def scale(self, stage: str, consumers: int) -> None:
        name = self._name(stage)
        try:
            self._apps.patch_namespaced_deployment_scale(
                name, self._ns, {"spec": {"replicas": int(consumers)}}
            )
        except Exception as exc:
            raise self._fail(f"scaling deployment {name} to {consumers}", exc) from exc

    def endpoints(self) -> list[str]:
        if self._endpoints is not None:
            return self._endpoints()
        if self._core is None or not self._port:
            return []
        urls = []
        for name in sorted(set(self._deployments.values())):
            try:
                selector = self._apps.read_namespaced_deployment_scale(name, self._ns).status
                pods = self._core.list_namespaced_pod(
                    self._ns, label_selector=getattr(selector, "selector", None) or ""
                ).items
            except Exception as exc:
                raise self._fail(f"listing the pods of deployment {name}", exc) from exc
            for pod in pods:
                status = pod.status
                if getattr(status, "phase", None) == "Running" and getattr(status, "pod_ip", None):
                    urls.append(f"http://{status.pod_ip}:{self._port}/metrics")
        return urls
