"""A cluster's recorded state (`state.json` in its state folder) and the lock that guards it."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from jizhi.local.errors import LocalClusterError
from jizhi.local.security import SECURITIES, Security


@dataclass(frozen=True, slots=True)
class Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True, slots=True)
class State:
    kafka_version: str
    cluster_id: str
    data_dir: str
    heap: str
    nodes: tuple[Node, ...]
    security: Security = "plaintext"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        ids = [n.node_id for n in self.nodes]
        raise LocalClusterError(
            f"no node {node_id} in the local cluster (nodes: {ids})", retriable=False
        )


def load_state(sdir: Path) -> State | None:
    path = sdir / "state.json"
    try:
        raw = json.loads(path.read_text())
        return State(
            kafka_version=raw["kafka_version"],
            cluster_id=raw["cluster_id"],
            data_dir=raw["data_dir"],
            heap=raw["heap"],
            nodes=tuple(Node(**n) for n in raw["nodes"]),
            security=_security(raw.get("security", "plaintext")),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalClusterError(
            f"{path}: unreadable state file ({exc}); stop any broker by hand and delete it",
            retriable=False,
        ) from exc


def _security(value: object) -> Security:
    for s in SECURITIES:  # a state file from before `--security` has none: plaintext
        if value == s:
            return s
    raise ValueError(f"security {value!r} is not one of {SECURITIES}")


def save_state(sdir: Path, state: State) -> None:
    tmp = sdir / "state.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(sdir / "state.json")


@contextlib.contextmanager
def locked(sdir: Path) -> Iterator[None]:
    """Two `up`s at once (two shells, parallel test workers) would both pick port 9092."""
    sdir.mkdir(parents=True, exist_ok=True)
    with (sdir / "lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
