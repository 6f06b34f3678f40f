"""The Kubernetes actuator: one Deployment per stage, its replicas driven through the scale
subresource (the same call ``kubectl scale`` and the HPA make), with the official client.

Only ``spec.replicas`` is written; pods, rollouts and disruption budgets stay Kubernetes'
business. "Actual" is the scale's ``status.replicas`` (pods the Deployment runs now), so a
stage whose pods cannot be scheduled shows desired > actual on the allocator's dashboard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from allocator.errors import ActuatorError


class KubernetesActuator:
    def __init__(
        self,
        apps: Any,
        *,
        namespace: str,
        deployments: Mapping[str, str],
        endpoints: Callable[[], list[str]] | None = None,
    ) -> None:
        """``apps``: a ``kubernetes.client.AppsV1Api``; ``deployments``: stage -> name."""
        self._apps = apps
        self._ns = namespace
        self._deployments = dict(deployments)
        self._endpoints = endpoints

    @classmethod
    def from_config(
        cls, *, namespace: str, deployments: Mapping[str, str], in_cluster: bool = False
    ) -> KubernetesActuator:
        """Credentials from the pod's service account or the user's kubeconfig, never flags."""
        from kubernetes import client, config  # noqa: PLC0415 - optional dependency

        if in_cluster:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.AppsV1Api(), namespace=namespace, deployments=deployments)

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
        return self._endpoints() if self._endpoints is not None else []
