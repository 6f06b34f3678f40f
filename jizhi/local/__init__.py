"""`jizhi local`: a real Apache Kafka cluster (KRaft) on loopback, from Maven jars, without Docker.

Integration tests, benchmarks and the local-cluster mode need a broker that behaves like production
(replication, fencing, rebalances), yet CI and laptops may have no container engine. So the broker
runs straight from the jars Maven resolves through ``jizhi/kafka/pom.xml``, as detached processes
whose pids, logs and state live under a state folder: ``up`` in one shell, ``status``/``down`` from
another. Each node is broker and controller at once; with three nodes the metadata quorum has three
voters, so a fault test may kill any one node and the cluster keeps serving.
"""

from jizhi.local.cli import register
from jizhi.local.cluster import (
    BrokerStatus,
    LocalStatus,
    down,
    kill_broker,
    start_broker,
    status,
    up,
)
from jizhi.local.errors import LocalClusterError
from jizhi.local.jars import KAFKA_VERSION

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
