"""The public API: start (`up`), inspect (`status`) and stop (`down`) a local cluster, and kill or
restart one node of it for fault tests."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from jizhi.local.config import DEFAULT_CLIENT_PORT, kafka_uuid, pick_ports, render_config
from jizhi.local.errors import LocalClusterError
from jizhi.local.jars import KAFKA_VERSION, ensure_jars, find_java
from jizhi.local.launch import format_storage, spawn, wait_ready
from jizhi.local.paths import node_dir, resolve_state_dir
from jizhi.local.process import is_alive, read_pid, send_signal, wait_dead
from jizhi.local.security import Security, make_secrets
from jizhi.local.state import Node, State, load_state, locked, save_state

_DATA_MARKER = ".jizhi-local-kafka"


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    node_id: int
    pid: int | None
    port: int
    controller_port: int
    alive: bool
    log: str


@dataclass(frozen=True, slots=True)
class LocalStatus:
    """``running`` is true while any node lives: 3 nodes with one killed still serve clients."""

    running: bool
    bootstrap: str | None
    brokers: tuple[BrokerStatus, ...]
    kafka_version: str | None
    data_dir: str | None
    state_dir: str
    security: Security = "plaintext"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def status(*, state_dir: Path | str | None = None) -> LocalStatus:
    """Reads the state folder only, so it answers from any shell and never starts anything."""
    sdir = resolve_state_dir(state_dir)
    state = load_state(sdir)
    if state is None:
        return LocalStatus(False, None, (), None, None, str(sdir))
    brokers = []
    for n in state.nodes:
        ndir = node_dir(sdir, n.node_id)
        pid = read_pid(sdir, n.node_id)
        alive = is_alive(pid, ndir / "server.properties")
        brokers.append(
            BrokerStatus(n.node_id, pid, n.port, n.controller_port, alive, str(ndir / "server.log"))
        )
    return LocalStatus(
        any(b.alive for b in brokers),
        state.bootstrap,
        tuple(brokers),
        state.kafka_version,
        state.data_dir,
        str(sdir),
        state.security,
    )


def up(
    brokers: Literal[1, 3] = 1,
    *,
    kafka_version: str = KAFKA_VERSION,
    heap: str | None = None,
    timeout: float = 120.0,
    state_dir: Path | str | None = None,
    security: Security = "plaintext",
    first_port: int | None = DEFAULT_CLIENT_PORT,
) -> LocalStatus:
    """Starts a cluster of `brokers` nodes and returns once it answers metadata requests.

    Idempotent: a running cluster of the same size is returned as is, and nodes of it that were
    killed are started again. Needs `java` (17+) always and `mvn` only until the jars are cached.
    ``security="sasl_ssl"`` makes a CA, certificates and SCRAM users first (see
    `jizhi.local.security`); ``first_port`` is where node 1 listens if free (None: any port).
    """
    if brokers not in (1, 3):
        raise LocalClusterError(f"brokers={brokers}: only 1 or 3 are supported", retriable=False)
    sdir = resolve_state_dir(state_dir)
    with locked(sdir):
        current = status(state_dir=sdir)
        state = load_state(sdir)
        if state is not None and current.running:
            if len(state.nodes) != brokers or state.security != security:
                raise LocalClusterError(
                    f"a {len(state.nodes)}-broker {state.security} cluster is already running "
                    f"at {state.bootstrap} (state in {sdir}); run `jizhi local down` first",
                    retriable=False,
                )
            dead = [b.node_id for b in current.brokers if not b.alive]
            if dead:
                java = find_java()
                for node_id in dead:
                    spawn(java, sdir, state, state.node(node_id))
            wait_ready(sdir, state, [n.node_id for n in state.nodes], timeout)
            return status(state_dir=sdir)
        if state is not None:  # every node is gone (e.g. after a reboot): start afresh
            _remove_cluster(sdir, state)
        java = find_java()
        ensure_jars(kafka_version)
        return _start_fresh(
            java,
            sdir,
            brokers=brokers,
            version=kafka_version,
            heap=heap,
            timeout=timeout,
            security=security,
            first_port=first_port,
        )


def _start_fresh(
    java: str,
    sdir: Path,
    *,
    brokers: int,
    version: str,
    heap: str | None,
    timeout: float,
    security: Security,
    first_port: int | None,
) -> LocalStatus:
    ports = pick_ports(2 * brokers, first=first_port)
    data_dir = Path(tempfile.mkdtemp(prefix="jizhi-kafka-"))
    (data_dir / _DATA_MARKER).write_text(str(sdir) + "\n")
    state = State(
        kafka_version=version,
        cluster_id=kafka_uuid(),
        data_dir=str(data_dir),
        heap=heap or ("1g" if brokers == 1 else "512m"),
        nodes=tuple(Node(i + 1, ports[i], ports[brokers + i]) for i in range(brokers)),
        security=security,
    )
    # Saved before anything starts, so `down` can clean up whatever the next steps leave behind.
    save_state(sdir, state)
    try:
        if security != "plaintext":
            make_secrets(sdir, state.bootstrap)
        for node in state.nodes:
            shutil.rmtree(node_dir(sdir, node.node_id), ignore_errors=True)
            render_config(sdir, state, node)
        (sdir / "log4j2.properties").write_bytes(
            resources.files("jizhi").joinpath("kafka/log4j2.properties").read_bytes()
        )
        format_storage(java, sdir, state)
        for node in state.nodes:
            spawn(java, sdir, state, node)
        wait_ready(sdir, state, [n.node_id for n in state.nodes], timeout)
    except BaseException:
        _stop_all(sdir, state, timeout=5.0)
        _remove_cluster(sdir, state)
        raise
    return status(state_dir=sdir)


def _stop_all(sdir: Path, state: State, *, timeout: float) -> None:
    """SIGTERM lets each broker shut down cleanly; SIGKILL after `timeout` because a broker whose
    controller quorum is already gone can wait a long time for it."""
    pids = []
    for n in state.nodes:
        config = node_dir(sdir, n.node_id) / "server.properties"
        pid = read_pid(sdir, n.node_id)
        if pid is not None and is_alive(pid, config):
            send_signal(pid, signal.SIGTERM)
            pids.append((pid, config))
    deadline = time.monotonic() + timeout
    for pid, config in pids:
        if not wait_dead(pid, config, max(0.0, deadline - time.monotonic())):
            send_signal(pid, signal.SIGKILL)
            wait_dead(pid, config, 10.0)


def _remove_cluster(sdir: Path, state: State) -> None:
    data = Path(state.data_dir)
    if (data / _DATA_MARKER).exists():  # never rmtree a path we did not create
        shutil.rmtree(data, ignore_errors=True)
    for n in state.nodes:
        with contextlib.suppress(FileNotFoundError):
            (node_dir(sdir, n.node_id) / "broker.pid").unlink()
    with contextlib.suppress(FileNotFoundError):
        (sdir / "state.json").unlink()


def down(*, timeout: float = 30.0, state_dir: Path | str | None = None) -> bool:
    """Stops every node and deletes the data folder; logs stay for a post-mortem.

    Returns whether there was a cluster to stop.
    """
    sdir = resolve_state_dir(state_dir)
    with locked(sdir):
        state = load_state(sdir)
        if state is None:
            return False
        _stop_all(sdir, state, timeout=timeout)
        _remove_cluster(sdir, state)
        return True


def kill_broker(
    node_id: int,
    *,
    graceful: bool = False,
    timeout: float = 30.0,
    state_dir: Path | str | None = None,
) -> None:
    """For fault tests: SIGKILL by default, as a crash is the case replication must survive."""
    sdir = resolve_state_dir(state_dir)
    with locked(sdir):
        state = _require_state(sdir)
        state.node(node_id)
        config = node_dir(sdir, node_id) / "server.properties"
        pid = read_pid(sdir, node_id)
        if pid is None or not is_alive(pid, config):
            return
        send_signal(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        if not wait_dead(pid, config, timeout):
            send_signal(pid, signal.SIGKILL)
            if not wait_dead(pid, config, 10.0):
                raise LocalClusterError(
                    f"node {node_id} (pid {pid}) survived SIGKILL", retriable=True
                )


def start_broker(
    node_id: int, *, timeout: float = 60.0, state_dir: Path | str | None = None
) -> None:
    """Restarts a killed node on its old ports and data; returns once the cluster lists it."""
    sdir = resolve_state_dir(state_dir)
    with locked(sdir):
        state = _require_state(sdir)
        node = state.node(node_id)
        config = node_dir(sdir, node_id) / "server.properties"
        if not is_alive(read_pid(sdir, node_id), config):
            spawn(find_java(), sdir, state, node)
        wait_ready(sdir, state, [node_id], timeout)


def _require_state(sdir: Path) -> State:
    state = load_state(sdir)
    if state is None:
        raise LocalClusterError(
            f"no local cluster recorded in {sdir}; run `jizhi local up` first", retriable=False
        )
    return state
