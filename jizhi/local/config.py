"""What each node is configured with: cluster and voter ids, free ports, its server.properties."""

from __future__ import annotations

import base64
import os
import socket
import uuid
from importlib import resources
from pathlib import Path
from string import Template

from jizhi.local.paths import node_dir
from jizhi.local.security import listener_block
from jizhi.local.state import Node, State

DEFAULT_CLIENT_PORT = 9092


def kafka_uuid() -> str:
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


def pick_ports(count: int, *, first: int | None = DEFAULT_CLIENT_PORT) -> list[int]:
    """``first`` (the first node's client port) when it is free, the rest wherever the OS says;
    ``first=None`` keeps a second cluster (a test's) off the well-known port altogether."""
    ports: list[int] = [first] if first is not None and _port_free(first) else []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in ports:
            ports.append(port)
    return ports


def render_config(sdir: Path, state: State, node: Node) -> Path:
    template = Template(resources.files("jizhi").joinpath("kafka/server.properties").read_text())
    replication = len(state.nodes)
    text = template.substitute(
        node_id=node.node_id,
        listeners=listener_block(sdir, state.security, node.port, node.controller_port).rstrip(),
        quorum_bootstrap=",".join(f"127.0.0.1:{n.controller_port}" for n in state.nodes),
        log_dir=Path(state.data_dir) / f"node-{node.node_id}",
        replication=replication,
        min_isr=min(2, replication),
    )
    ndir = node_dir(sdir, node.node_id)
    ndir.mkdir(parents=True, exist_ok=True)
    path = ndir / "server.properties"
    path.unlink(missing_ok=True)
    # Owner-only: with --security it holds the keystore and inter-broker passwords.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path
