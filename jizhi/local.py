"""`jizhi local`: a real Apache Kafka cluster (KRaft) on loopback, from Maven jars, without Docker.

Integration tests, benchmarks and the local-cluster mode need a broker that behaves like production
(replication, fencing, rebalances), yet CI and laptops may have no container engine. So the broker
runs straight from the jars Maven resolves through ``jizhi/kafka/pom.xml``, as detached processes
whose pids, logs and state live under a state folder: ``up`` in one shell, ``status``/``down`` from
another. Each node is broker and controller at once; with three nodes the metadata quorum has three
voters, so a fault test may kill any one node and the cluster keeps serving.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Literal

from confluent_kafka.admin import AdminClient

from stages.errors import JizhiError

__all__ = [
    "KAFKA_VERSION",
    "BrokerStatus",
    "LocalClusterError",
    "LocalStatus",
    "down",
    "kill_broker",
    "register",
    "start_broker",
    "status",
    "up",
]

KAFKA_VERSION = "4.1.1"
DEFAULT_CLIENT_PORT = 9092
_MIN_JAVA = 17
_DATA_MARKER = ".jizhi-local-kafka"
_COMPLETE_MARKER = ".complete"


class LocalClusterError(JizhiError):
    """The local cluster could not be started, inspected or stopped.

    ``retriable`` tells a caller whether running the same command again can help (a download that
    failed, a port taken meanwhile) or whether something must change first (a missing tool, a
    cluster of another size already running).
    """

    def __init__(self, message: str, *, retriable: bool) -> None:
        hint = "retrying may help" if retriable else "retrying will not help until this is fixed"
        super().__init__(f"{message} ({hint})")
        self.retriable = retriable


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- where things live -------------------------------------------------------------------------


def _jizhi_home() -> Path:
    return Path(os.environ.get("JIZHI_HOME") or Path.home() / ".cache" / "jizhi")


def _state_dir(state_dir: Path | str | None) -> Path:
    """A caller may pass its own folder so that several clusters (e.g. a test's) can coexist."""
    return Path(state_dir) if state_dir is not None else _jizhi_home() / "local"


def _libs_dir(version: str) -> Path:
    return _jizhi_home() / "kafka" / version / "libs"


def _node_dir(sdir: Path, node_id: int) -> Path:
    return sdir / f"node-{node_id}"


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True, slots=True)
class _State:
    kafka_version: str
    cluster_id: str
    data_dir: str
    heap: str
    nodes: tuple[_Node, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> _Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        ids = [n.node_id for n in self.nodes]
        raise LocalClusterError(
            f"no node {node_id} in the local cluster (nodes: {ids})", retriable=False
        )


def _load_state(sdir: Path) -> _State | None:
    path = sdir / "state.json"
    try:
        raw = json.loads(path.read_text())
        return _State(
            kafka_version=raw["kafka_version"],
            cluster_id=raw["cluster_id"],
            data_dir=raw["data_dir"],
            heap=raw["heap"],
            nodes=tuple(_Node(**n) for n in raw["nodes"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalClusterError(
            f"{path}: unreadable state file ({exc}); stop any broker by hand and delete it",
            retriable=False,
        ) from exc


def _save_state(sdir: Path, state: _State) -> None:
    tmp = sdir / "state.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(sdir / "state.json")


@contextlib.contextmanager
def _locked(sdir: Path) -> Iterator[None]:
    """Two `up`s at once (two shells, parallel test workers) would both pick port 9092."""
    sdir.mkdir(parents=True, exist_ok=True)
    with (sdir / "lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- processes ---------------------------------------------------------------------------------


def _read_pid(sdir: Path, node_id: int) -> int | None:
    try:
        return int((_node_dir(sdir, node_id) / "broker.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None, config: Path) -> bool:
    """Checks the command line too: after a reboot the recorded pid may belong to anything."""
    if pid is None:
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs (macOS): trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    # A killed broker whose parent (often PID 1 in a container) does not reap it stays a zombie.
    return state not in ("Z", "X") and str(config).encode() in cmdline


def _wait_dead(pid: int, config: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid, config):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"    ({path} not written)"
    return "\n".join("    " + line for line in text[-lines:]) or f"    ({path} is empty)"


# --- tools and jars ----------------------------------------------------------------------------


def _need(tool: str, why: str, install: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalClusterError(
            f"`{tool}` is not on PATH; it is needed to {why}. Install it ({install}) and run again",
            retriable=False,
        )
    return path


def _java() -> str:
    """JAVA_HOME first, as Kafka's own scripts do: it is how users pick one JDK among several."""
    home_java = Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin" / "java"
    java = (
        str(home_java)
        if os.access(home_java, os.X_OK)
        else _need(
            "java",
            "run the Kafka broker",
            f"Java {_MIN_JAVA}+, e.g. apt-get install -y openjdk-17-jre-headless",
        )
    )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392" style
        major = int(found.group(2))
    if major < _MIN_JAVA:
        raise LocalClusterError(
            f"{java}: Kafka 4 needs Java {_MIN_JAVA}+, found {out.strip().splitlines()[:1]}",
            retriable=False,
        )
    return java


def _jars_cached(version: str) -> bool:
    return (_libs_dir(version) / _COMPLETE_MARKER).exists()


def _ensure_jars(version: str) -> Path:
    """Maven runs once per version; a marker file makes an interrupted download start over."""
    libs = _libs_dir(version)
    if _jars_cached(version):
        return libs
    mvn = _need(
        "mvn",
        f"fetch the Kafka {version} jars once into {libs}",
        "Apache Maven 3.6+, e.g. apt-get install -y maven",
    )
    base = libs.parent
    base.mkdir(parents=True, exist_ok=True)
    # Maven reads the pom from the cache, not from the installed package, which may be read-only.
    pom = base / "pom.xml"
    pom.write_bytes(resources.files("jizhi").joinpath("kafka/pom.xml").read_bytes())
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=base))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-Djizhi.libs={staging}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LocalClusterError(f"{' '.join(cmd)}: no answer in 900 s", retriable=True) from exc
    if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise LocalClusterError(
            f"{' '.join(cmd)} failed (exit {done.returncode}); is Maven Central reachable and "
            f"does Kafka {version} exist there?\n{tail}",
            retriable=True,
        )
    (staging / _COMPLETE_MARKER).write_text(version + "\n")
    shutil.rmtree(libs, ignore_errors=True)
    staging.replace(libs)
    return libs


# --- configuration -----------------------------------------------------------------------------


def _kafka_uuid() -> str:
    """Same shape as `StorageTool random-uuid` (URL-safe base64 of 16 random bytes), without
    paying one JVM start for each id on a two-core machine."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like command-line flags
            return text


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    ports: list[int] = [DEFAULT_CLIENT_PORT] if _port_free(DEFAULT_CLIENT_PORT) else []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in ports:
            ports.append(port)
    return ports


def _render_config(sdir: Path, state: _State, node: _Node) -> Path:
    template = Template(resources.files("jizhi").joinpath("kafka/server.properties").read_text())
    replication = len(state.nodes)
    text = template.substitute(
        node_id=node.node_id,
        client_port=node.port,
        controller_port=node.controller_port,
        quorum_bootstrap=",".join(f"127.0.0.1:{n.controller_port}" for n in state.nodes),
        log_dir=Path(state.data_dir) / f"node-{node.node_id}",
        replication=replication,
        min_isr=min(2, replication),
    )
    ndir = _node_dir(sdir, node.node_id)
    ndir.mkdir(parents=True, exist_ok=True)
    path = ndir / "server.properties"
    path.write_text(text)
    return path


def _java_cmd(
    java: str, sdir: Path, state: _State, node_id: int, main: str, *args: str
) -> list[str]:
    libs = _libs_dir(state.kafka_version)
    return [
        java,
        f"-Xmx{state.heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={sdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={_node_dir(sdir, node_id)}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def _format_storage(java: str, sdir: Path, state: _State) -> None:
    """Formats every node in parallel: each format is a JVM start, ~2 s of CPU here."""
    if len(state.nodes) == 1:
        quorum = ["--standalone"]
    else:
        voters = ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}:{_kafka_uuid()}" for n in state.nodes
        )
        quorum = ["--initial-controllers", voters]
    running = []
    for node in state.nodes:
        config = _node_dir(sdir, node.node_id) / "server.properties"
        cmd = _java_cmd(
            java,
            sdir,
            state,
            node.node_id,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            state.cluster_id,
            "-c",
            str(config),
            *quorum,
        )
        log = _node_dir(sdir, node.node_id) / "format.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        running.append((node, proc, log))
    failed = [(node, log) for node, proc, log in running if proc.wait(timeout=120) != 0]
    if failed:
        details = "\n".join(f"  node {n.node_id} ({log}):\n{_tail(log)}" for n, log in failed)
        raise LocalClusterError(
            f"kafka.tools.StorageTool format failed:\n{details}", retriable=False
        )


def _spawn(java: str, sdir: Path, state: _State, node: _Node) -> int:
    """Starts the broker through `sh ... &` so it is re-parented away from this process: it keeps
    running after the CLI exits, and this process never holds it as a child (no zombie, no
    ResourceWarning) when a test kills it."""
    ndir = _node_dir(sdir, node.node_id)
    config = ndir / "server.properties"
    cmd = _java_cmd(java, sdir, state, node.node_id, "kafka.Kafka", str(config))
    launcher = 'exec "$@" >>"$JIZHI_BROKER_OUT" 2>&1 </dev/null & echo $!'
    env = {**os.environ, "JIZHI_BROKER_OUT": str(ndir / "stdout.log")}
    done = subprocess.run(
        ["sh", "-c", launcher, "sh", *cmd],
        capture_output=True,
        text=True,
        env=env,
        start_new_session=True,
        check=False,
    )
    try:
        pid = int(done.stdout.strip())
    except ValueError as exc:
        raise LocalClusterError(
            f"could not start node {node.node_id}: {done.stderr.strip()}", retriable=True
        ) from exc
    (ndir / "broker.pid").write_text(f"{pid}\n")
    return pid


def _wait_ready(sdir: Path, state: _State, node_ids: list[int], timeout: float) -> None:
    """Returns once the cluster's metadata lists every node in `node_ids`: an open port is not
    enough, a broker accepts connections seconds before it has joined the quorum."""
    deadline = time.monotonic() + timeout
    admin: Any = None
    seen: set[int] = set()
    while time.monotonic() < deadline:
        for node_id in node_ids:
            config = _node_dir(sdir, node_id) / "server.properties"
            if not _alive(_read_pid(sdir, node_id), config):
                ndir = _node_dir(sdir, node_id)
                raise LocalClusterError(
                    f"Kafka node {node_id} exited while starting; {ndir / 'server.log'} ends:\n"
                    f"{_tail(ndir / 'server.log')}\n  {ndir / 'stdout.log'} ends:\n"
                    f"{_tail(ndir / 'stdout.log', 5)}",
                    retriable=True,
                )
        if admin is None and any(_connectable(n.port) for n in state.nodes):
            # log_level 0: librdkafka would print every refused connection to a booting node.
            admin = AdminClient({"bootstrap.servers": state.bootstrap, "log_level": 0})
        if admin is not None:
            try:
                seen = {int(b) for b in admin.list_topics(timeout=2).brokers}
            except Exception:  # KafkaException while the quorum elects a leader
                seen = set()
            if set(node_ids) <= seen:
                return
        time.sleep(0.25)
    raise LocalClusterError(
        f"Kafka at {state.bootstrap} did not list nodes {sorted(node_ids)} within {timeout:.0f} s "
        f"(listed: {sorted(seen)}); see {sdir}/node-*/server.log",
        retriable=True,
    )


def _connectable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- public API --------------------------------------------------------------------------------


def status(*, state_dir: Path | str | None = None) -> LocalStatus:
    """Reads the state folder only, so it answers from any shell and never starts anything."""
    sdir = _state_dir(state_dir)
    state = _load_state(sdir)
    if state is None:
        return LocalStatus(False, None, (), None, None, str(sdir))
    brokers = []
    for n in state.nodes:
        ndir = _node_dir(sdir, n.node_id)
        pid = _read_pid(sdir, n.node_id)
        alive = _alive(pid, ndir / "server.properties")
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
    )


def up(
    brokers: Literal[1, 3] = 1,
    *,
    kafka_version: str = KAFKA_VERSION,
    heap: str | None = None,
    timeout: float = 120.0,
    state_dir: Path | str | None = None,
) -> LocalStatus:
    """Starts a cluster of `brokers` nodes and returns once it answers metadata requests.

    Idempotent: a running cluster of the same size is returned as is, and nodes of it that were
    killed are started again. Needs `java` (17+) always and `mvn` only until the jars are cached.
    """
    if brokers not in (1, 3):
        raise LocalClusterError(f"brokers={brokers}: only 1 or 3 are supported", retriable=False)
    sdir = _state_dir(state_dir)
    with _locked(sdir):
        current = status(state_dir=sdir)
        state = _load_state(sdir)
        if state is not None and current.running:
            if len(state.nodes) != brokers:
                raise LocalClusterError(
                    f"a {len(state.nodes)}-broker cluster is already running at "
                    f"{state.bootstrap} (state in {sdir}); run `jizhi local down` first",
                    retriable=False,
                )
            dead = [b.node_id for b in current.brokers if not b.alive]
            if dead:
                java = _java()
                for node_id in dead:
                    _spawn(java, sdir, state, state.node(node_id))
            _wait_ready(sdir, state, [n.node_id for n in state.nodes], timeout)
            return status(state_dir=sdir)
        if state is not None:  # every node is gone (e.g. after a reboot): start afresh
            _remove_cluster(sdir, state)
        java = _java()
        _ensure_jars(kafka_version)
        return _start_fresh(
            java, sdir, brokers=brokers, version=kafka_version, heap=heap, timeout=timeout
        )


def _start_fresh(
    java: str, sdir: Path, *, brokers: int, version: str, heap: str | None, timeout: float
) -> LocalStatus:
    ports = _pick_ports(2 * brokers)
    data_dir = Path(tempfile.mkdtemp(prefix="jizhi-kafka-"))
    (data_dir / _DATA_MARKER).write_text(str(sdir) + "\n")
    state = _State(
        kafka_version=version,
        cluster_id=_kafka_uuid(),
        data_dir=str(data_dir),
        heap=heap or ("1g" if brokers == 1 else "512m"),
        nodes=tuple(_Node(i + 1, ports[i], ports[brokers + i]) for i in range(brokers)),
    )
    # Saved before anything starts, so `down` can clean up whatever the next steps leave behind.
    _save_state(sdir, state)
    try:
        for node in state.nodes:
            shutil.rmtree(_node_dir(sdir, node.node_id), ignore_errors=True)
            _render_config(sdir, state, node)
        (sdir / "log4j2.properties").write_bytes(
            resources.files("jizhi").joinpath("kafka/log4j2.properties").read_bytes()
        )
        _format_storage(java, sdir, state)
        for node in state.nodes:
            _spawn(java, sdir, state, node)
        _wait_ready(sdir, state, [n.node_id for n in state.nodes], timeout)
    except BaseException:
        _stop_all(sdir, state, timeout=5.0)
        _remove_cluster(sdir, state)
        raise
    return status(state_dir=sdir)


def _stop_all(sdir: Path, state: _State, *, timeout: float) -> None:
    """SIGTERM lets each broker shut down cleanly; SIGKILL after `timeout` because a broker whose
    controller quorum is already gone can wait a long time for it."""
    pids = []
    for n in state.nodes:
        config = _node_dir(sdir, n.node_id) / "server.properties"
        pid = _read_pid(sdir, n.node_id)
        if pid is not None and _alive(pid, config):
            _signal(pid, signal.SIGTERM)
            pids.append((pid, config))
    deadline = time.monotonic() + timeout
    for pid, config in pids:
        if not _wait_dead(pid, config, max(0.0, deadline - time.monotonic())):
            _signal(pid, signal.SIGKILL)
            _wait_dead(pid, config, 10.0)


def _remove_cluster(sdir: Path, state: _State) -> None:
    data = Path(state.data_dir)
    if (data / _DATA_MARKER).exists():  # never rmtree a path we did not create
        shutil.rmtree(data, ignore_errors=True)
    for n in state.nodes:
        with contextlib.suppress(FileNotFoundError):
            (_node_dir(sdir, n.node_id) / "broker.pid").unlink()
    with contextlib.suppress(FileNotFoundError):
        (sdir / "state.json").unlink()


def down(*, timeout: float = 30.0, state_dir: Path | str | None = None) -> bool:
    """Stops every node and deletes the data folder; logs stay for a post-mortem.

    Returns whether there was a cluster to stop.
    """
    sdir = _state_dir(state_dir)
    with _locked(sdir):
        state = _load_state(sdir)
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
    sdir = _state_dir(state_dir)
    with _locked(sdir):
        state = _require_state(sdir)
        state.node(node_id)
        config = _node_dir(sdir, node_id) / "server.properties"
        pid = _read_pid(sdir, node_id)
        if pid is None or not _alive(pid, config):
            return
        _signal(pid, signal.SIGTERM if graceful else signal.SIGKILL)
        if not _wait_dead(pid, config, timeout):
            _signal(pid, signal.SIGKILL)
            if not _wait_dead(pid, config, 10.0):
                raise LocalClusterError(
                    f"node {node_id} (pid {pid}) survived SIGKILL", retriable=True
                )


def start_broker(
    node_id: int, *, timeout: float = 60.0, state_dir: Path | str | None = None
) -> None:
    """Restarts a killed node on its old ports and data; returns once the cluster lists it."""
    sdir = _state_dir(state_dir)
    with _locked(sdir):
        state = _require_state(sdir)
        node = state.node(node_id)
        config = _node_dir(sdir, node_id) / "server.properties"
        if not _alive(_read_pid(sdir, node_id), config):
            _spawn(_java(), sdir, state, node)
        _wait_ready(sdir, state, [node_id], timeout)


def _require_state(sdir: Path) -> _State:
    state = _load_state(sdir)
    if state is None:
        raise LocalClusterError(
            f"no local cluster recorded in {sdir}; run `jizhi local up` first", retriable=False
        )
    return state


# --- CLI ---------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Adds `jizhi local up|status|down` to the CLI's argparse subparsers."""
    local = subparsers.add_parser(
        "local",
        help="a real Kafka cluster on loopback (from Maven jars, no Docker)",
        description="Start, inspect and stop a Kafka (KRaft) cluster on 127.0.0.1. State lives "
        "in $JIZHI_HOME/local (default ~/.cache/jizhi/local), jars in $JIZHI_HOME/kafka.",
    )
    sub = local.add_subparsers(dest="local_command", required=True)
    p_up = sub.add_parser("up", help="start the cluster (no-op if running); prints the bootstrap")
    p_up.add_argument(
        "--brokers",
        type=int,
        choices=(1, 3),
        default=1,
        help="1 broker, or 3 for fault tests (replication 3 survives one kill)",
    )
    p_up.add_argument("--kafka-version", default=KAFKA_VERSION, help=argparse.SUPPRESS)
    p_up.set_defaults(func=_cmd_up)
    p_status = sub.add_parser("status", help="is it running, where, which pids")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_status.set_defaults(func=_cmd_status)
    p_down = sub.add_parser("down", help="stop every broker and delete the data")
    p_down.set_defaults(func=_cmd_down)


def _fail(command: str, exc: LocalClusterError) -> int:
    print(f"jizhi local {command}: {exc}", file=sys.stderr)
    return 1


def _cmd_up(args: argparse.Namespace) -> int:
    version = str(args.kafka_version)
    if not _jars_cached(version) and not status().running:
        print(
            f"fetching the Kafka {version} jars with Maven into {_libs_dir(version)} "
            "(first run only)...",
            file=sys.stderr,
        )
    started = time.monotonic()
    try:
        before = status()
        result = up(args.brokers, kafka_version=version)
    except LocalClusterError as exc:
        return _fail("up", exc)
    restarted = [b.node_id for b in before.brokers if before.running and not b.alive]
    if not before.running:
        how = f"up in {time.monotonic() - started:.1f} s"
    elif restarted:
        how = f"running again (restarted node(s) {restarted})"
    else:
        how = "already running"
    print(
        f"Kafka {result.kafka_version}: {len(result.brokers)} broker(s) {how}; "
        f"logs in {result.state_dir}",
        file=sys.stderr,
    )
    print(result.bootstrap)  # alone on stdout: `export JIZHI_BOOTSTRAP=$(jizhi local up)`
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when running and 1 when not, as `systemctl is-active`, for shell scripts."""
    try:
        result = status()
    except LocalClusterError as exc:
        return _fail("status", exc)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif not result.brokers:
        print("not running")
    else:
        print(
            f"{'running' if result.running else 'stopped'}  kafka {result.kafka_version}  "
            f"bootstrap {result.bootstrap}"
        )
        for b in result.brokers:
            print(
                f"  node {b.node_id}  pid {b.pid}  port {b.port}  "
                f"{'alive' if b.alive else 'dead'}  log {b.log}"
            )
    return 0 if result.running else 1


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        stopped = down()
    except LocalClusterError as exc:
        return _fail("down", exc)
    print("stopped" if stopped else "not running", file=sys.stderr)
    return 0
