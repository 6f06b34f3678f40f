"""The Docker Compose actuator: one compose service per group of stages, its replica count driven
with ``docker compose up -d --no-deps --no-recreate --scale <service>=<n> <service>``.

``--no-deps`` keeps a scale from touching Kafka or Aerospike; ``--no-recreate`` keeps it from
restarting the running workers when the file or the image changed since they started (redeploying
is a person's ``up``, not a side effect of adding a consumer). Compose stops the surplus containers
of a scale-down with SIGTERM, so a worker drains and commits as under the local actuator, and the
command returns only when they are gone: up to the service's ``stop_grace_period`` (40 s in
compose/docker-compose.yml), which ``timeout_s`` must cover.

"Actual" is the service's containers in state ``running`` (``docker compose ps``), health checks
starting included, restarting or exited ones not.

Stages can share a service: compose/docker-compose.yml runs ingest and features in one worker,
embed and score in another, so every container is a consumer of both stages and both read the
same actual. The reconcile loop asks per stage and only where desired and actual differ, so such
a service is scaled to the largest count its stages ask for, a stage that did not ask since its
last ``actual()`` counting as content with what it runs (the loop reads every stage's actual
before it scales any). Otherwise the two stages would take turns undoing each other's scale on
every look.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from allocator.errors import ActuatorError, AllocatorConfigError

# What the docker CLI says when the daemon is down or unreachable: the next look may find it up.
_TRANSIENT = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
    "context deadline exceeded",
)


class Run(Protocol):
    """``subprocess.run`` as this module calls it (injectable to wrap or record the calls)."""

    def __call__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        stdin: int,
        capture_output: bool,
        text: Literal[True],
        timeout: float,
        check: Literal[False],
    ) -> subprocess.CompletedProcess[str]: ...


def worker_service(stage: str, services: Iterable[str]) -> str | None:
    """The service running ``stage`` by compose/docker-compose.yml's naming,
    ``worker-<stage>[-<stage>...]`` (``worker-embed-score`` runs embed and score): the default, so
    the compose file stays the one place that groups stages into containers."""
    found = [s for s in services if s.startswith("worker-") and stage in s.split("-")[1:]]
    return found[0] if len(found) == 1 else None


def _last_line(stderr: str) -> str:
    """The error line: the docker CLI ends some errors with a "Run 'docker --help'" hint."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    while len(lines) > 1 and lines[-1].startswith("Run '"):
        lines.pop()
    return lines[-1] if lines else "(no output)"


def _containers(out: str, where: str) -> list[dict[str, Any]]:
    """``ps --format json``: a JSON array before Compose 2.21, one object per line since."""
    text = out.strip()
    try:
        if text.startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ActuatorError(
            f"{where}: unexpected output of docker compose ps: {exc}", retriable=False
        ) from exc
    return [r for r in rows if isinstance(r, dict)]


class ComposeActuator:
    def __init__(
        self,
        project_dir: Path | str,
        *,
        services: Mapping[str, str] | None = None,
        project: str | None = None,
        files: Sequence[str] = (),
        docker: str = "docker",
        timeout_s: float = 120.0,
        metrics_port: int | None = None,
        run: Run = subprocess.run,
    ) -> None:
        """``services``: stage -> compose service (default: `worker_service` over the services of
        ``docker compose config --services``). ``project_dir`` is where compose runs, so
        ``files`` and the file's relative paths resolve as they do for a person there.

        ``metrics_port``: the workers' metrics port, to list each container's published host
        port for it as an endpoint. None (the default) lists none: the workers of
        compose/docker-compose.yml publish no port (replicas could not share one) and
        Prometheus finds them by DNS inside the compose network.
        """
        self._dir = Path(project_dir)
        if not self._dir.is_dir():
            raise AllocatorConfigError(f"compose.project_dir: {self._dir} is not a directory")
        if timeout_s <= 0:
            raise AllocatorConfigError(f"compose.timeout_s: {timeout_s} must be > 0")
        self._services = dict(services) if services is not None else None
        self._known: list[str] | None = None
        self._base = [docker, "compose"]
        if project:
            self._base += ["-p", project]
        for f in files:
            self._base += ["-f", f]
        self._docker = docker
        self._timeout = timeout_s
        self._port = metrics_port
        self._run = run
        self._running: dict[str, int] = {}  # stage -> its service's running containers
        self._asked: dict[str, int] = {}  # stage -> consumers asked since its last actual()

    def _compose(self, what: str, *args: str) -> str:
        try:
            done = self._run(
                [*self._base, *args],
                cwd=self._dir,
                stdin=subprocess.DEVNULL,  # never wait on a prompt
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ActuatorError(
                f"{what} in {self._dir}: docker compose timed out after {self._timeout:g} s",
                retriable=True,
            ) from exc
        except OSError as exc:
            raise ActuatorError(
                f"{what} in {self._dir}: cannot run {self._docker} ({exc})", retriable=False
            ) from exc
        if done.returncode != 0:
            line = _last_line(done.stderr)
            raise ActuatorError(
                f"{what} in {self._dir}: docker compose exited {done.returncode}: {line}",
                retriable=any(m in done.stderr.lower() for m in _TRANSIENT),
            )
        return done.stdout

    def _service(self, stage: str) -> str:
        if self._services is not None:
            try:
                return self._services[stage]
            except KeyError:
                raise ActuatorError(
                    f"no compose service configured for stage {stage} (compose.services)",
                    retriable=False,
                ) from None
        known = self._compose_services()
        service = worker_service(stage, known)
        if service is None:
            raise ActuatorError(
                f"no single worker-... service of {self._dir} runs stage {stage} "
                f"(services: {', '.join(known)}); set compose.services",
                retriable=False,
            )
        return service

    def _compose_services(self) -> list[str]:
        """Read once: the file does not change under a running allocator, and a broken file
        fails here, before anything is scaled."""
        if self._known is None:
            self._known = self._compose("listing the services", "config", "--services").split()
        return self._known

    def _managed(self) -> list[str]:
        """The services this actuator scales: the configured ones, else every worker-... one."""
        if self._services is not None:
            return sorted(set(self._services.values()))
        return sorted(s for s in self._compose_services() if s.startswith("worker-"))

    def _ps(self, what: str, services: Sequence[str]) -> list[dict[str, Any]]:
        # State is checked here too, so the count does not rest on how one compose version
        # applies --status.
        out = self._compose(what, "ps", "--format", "json", "--status", "running", *services)
        return [c for c in _containers(out, what) if c.get("State") == "running"]

    def actual(self, stage: str) -> int:
        service = self._service(stage)
        n = len(self._ps(f"counting the containers of {service} (stage {stage})", [service]))
        self._running[stage] = n
        self._asked.pop(stage, None)
        return n

    def scale(self, stage: str, consumers: int) -> None:
        service = self._service(stage)
        self._asked[stage] = int(consumers)
        sharing = {s for s in (*self._running, *self._asked) if self._service(s) == service}
        n = max(self._asked.get(s, self._running.get(s, 0)) for s in sharing)
        self._compose(
            f"scaling {service} to {n} (stage {stage} asks {consumers})",
            "up",
            "-d",
            "--no-deps",
            "--no-recreate",
            "--scale",
            f"{service}={n}",
            service,
        )

    def endpoints(self) -> list[str]:
        if self._port is None:
            return []
        services = self._managed()
        if not services:
            return []
        urls = set()
        for c in self._ps("listing the workers' metrics ports", services):
            for p in c.get("Publishers") or ():
                if p.get("TargetPort") == self._port and p.get("PublishedPort"):
                    host = p.get("URL") or ""
                    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
                    host = f"[{host}]" if ":" in host else host
                    urls.add(f"http://{host}:{p['PublishedPort']}/metrics")
        return sorted(urls)
