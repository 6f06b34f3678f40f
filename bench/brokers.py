"""Which node of a `jizhi local` three-node cluster plays which role right now, and when the
cluster is whole again.

A fault that kills "a broker" proves little if it always hits a follower: the chaos loop aims at
the active KRaft controller and at a partition leader, so it has to find them first, and it must
not kill a second node before the first one is back in every ISR (with replication 3 and
min.insync.replicas 2 that would stall acks=all writes by design, not by defect).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient

from jizhi import local

_LEADER = re.compile(r"Completed transition to Leader\(.*?\bepoch=(\d+)")


class ThreeBrokers:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        status = local.status(state_dir=state_dir)
        if status.bootstrap is None or len(status.brokers) != 3:
            raise ValueError(f"no three-node cluster recorded in {state_dir}")
        self.bootstrap = status.bootstrap
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def alive(self) -> dict[int, bool]:
        return {b.node_id: b.alive for b in local.status(state_dir=self.state_dir).brokers}

    def controller(self) -> int:
        """The active controller: the live node that last completed a transition to raft leader,
        by epoch. The admin API cannot say (in KRaft, DescribeCluster names any broker)."""
        best: tuple[int, int] | None = None
        for b in local.status(state_dir=self.state_dir).brokers:
            if not b.alive:
                continue
            log = Path(b.log)
            text = log.read_text(errors="replace") if log.exists() else ""
            epochs = [int(m.group(1)) for m in _LEADER.finditer(text)]
            if epochs and (best is None or max(epochs) > best[0]):
                best = (max(epochs), b.node_id)
        if best is None:
            raise RuntimeError(f"no node of {self.state_dir} logged becoming the controller")
        return best[1]

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> leader node of ``topic``."""
        meta = self._admin.list_topics(topic, timeout=10).topics[topic]
        return {p: int(info.leader) for p, info in meta.partitions.items()}

    def _partitions(self) -> list[tuple[str, int, int, int]]:
        """(topic, partition, leader, isr size) of every partition the cluster holds."""
        meta = self._admin.list_topics(timeout=10)
        return [
            (name, p, int(info.leader), len(info.isrs))
            for name, t in meta.topics.items()
            for p, info in t.partitions.items()
        ]

    def wait_leaders(self, timeout: float) -> float | None:
        """Seconds until every partition has a live leader again (None: not in ``timeout``)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                live = {n for n, ok in self.alive().items() if ok}
                if all(leader in live for _, _, leader, _ in self._partitions()):
                    return time.monotonic() - start
            except Exception:  # metadata from a node that is going away: ask again
                pass
            time.sleep(0.2)
        return None

    def wait_full_isr(self, timeout: float) -> float | None:
        """Seconds until every partition is back at three in-sync replicas."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                if all(isr >= 3 for *_, isr in self._partitions()):
                    return time.monotonic() - start
            except Exception:
                pass
            time.sleep(0.25)
        return None

    def kill(self, node_id: int) -> None:
        local.kill_broker(node_id, state_dir=self.state_dir)

    def start(self, node_id: int) -> None:
        local.start_broker(node_id, state_dir=self.state_dir, timeout=90.0)
