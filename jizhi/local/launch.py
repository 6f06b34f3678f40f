"""Running the JVM: format each node's storage, start brokers detached, wait until they serve."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from jizhi.local.config import kafka_uuid
from jizhi.local.errors import LocalClusterError
from jizhi.local.paths import libs_dir, node_dir
from jizhi.local.process import is_alive, read_pid, tail
from jizhi.local.security import admin_conf, scram_args
from jizhi.local.state import Node, State
from stages.runtime.kafka import KafkaAdmin, TransportError


def _java_cmd(
    java: str, sdir: Path, state: State, node_id: int, main: str, *args: str
) -> list[str]:
    libs = libs_dir(state.kafka_version)
    return [
        java,
        f"-Xmx{state.heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={sdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={node_dir(sdir, node_id)}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def format_storage(java: str, sdir: Path, state: State) -> None:
    """Formats every node in parallel: each format is a JVM start, ~2 s of CPU here."""
    if len(state.nodes) == 1:
        quorum = ["--standalone"]
    else:
        voters = ",".join(
            f"{n.node_id}@127.0.0.1:{n.controller_port}:{kafka_uuid()}" for n in state.nodes
        )
        quorum = ["--initial-controllers", voters]
    if state.security == "sasl_ssl":
        quorum += scram_args(sdir)
    running = []
    for node in state.nodes:
        config = node_dir(sdir, node.node_id) / "server.properties"
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
        log = node_dir(sdir, node.node_id) / "format.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        running.append((node, proc, log))
    failed = [(node, log) for node, proc, log in running if proc.wait(timeout=120) != 0]
    if failed:
        details = "\n".join(f"  node {n.node_id} ({log}):\n{tail(log)}" for n, log in failed)
        raise LocalClusterError(
            f"kafka.tools.StorageTool format failed:\n{details}", retriable=False
        )


def spawn(java: str, sdir: Path, state: State, node: Node) -> int:
    """Starts the broker through `sh ... &` so it is re-parented away from this process: it keeps
    running after the CLI exits, and this process never holds it as a child (no zombie, no
    ResourceWarning) when a test kills it."""
    ndir = node_dir(sdir, node.node_id)
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


def wait_ready(sdir: Path, state: State, node_ids: list[int], timeout: float) -> None:
    """Returns once the cluster's metadata lists every node in `node_ids`: an open port is not
    enough, a broker accepts connections seconds before it has joined the quorum."""
    deadline = time.monotonic() + timeout
    admin: KafkaAdmin | None = None
    seen: set[int] = set()
    try:
        while time.monotonic() < deadline:
            for node_id in node_ids:
                config = node_dir(sdir, node_id) / "server.properties"
                if not is_alive(read_pid(sdir, node_id), config):
                    ndir = node_dir(sdir, node_id)
                    raise LocalClusterError(
                        f"Kafka node {node_id} exited while starting; {ndir / 'server.log'} ends:\n"
                        f"{tail(ndir / 'server.log')}\n  {ndir / 'stdout.log'} ends:\n"
                        f"{tail(ndir / 'stdout.log', 5)}",
                        retriable=True,
                    )
            if admin is None and any(_connectable(n.port) for n in state.nodes):
                # log_level 0: librdkafka would print every refused connection to a booting node.
                admin = KafkaAdmin(
                    {
                        "bootstrap.servers": state.bootstrap,
                        "log_level": 0,
                        **admin_conf(sdir, state.security),
                    },
                    timeout=2,
                )
            if admin is not None:
                try:
                    seen = admin.brokers()
                except TransportError:  # while the quorum elects a leader
                    seen = set()
                if set(node_ids) <= seen:
                    return
            time.sleep(0.25)
        raise LocalClusterError(
            f"Kafka at {state.bootstrap} did not list nodes {sorted(node_ids)} "
            f"within {timeout:.0f} s "
            f"(listed: {sorted(seen)}); see {sdir}/node-*/server.log",
            retriable=True,
        )
    finally:
        if admin is not None:
            admin.close()


def _connectable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
