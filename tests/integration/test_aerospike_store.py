"""The Aerospike store against a real server: ``AEROSPIKE_HOSTS`` (e.g. ``127.0.0.1:3000``), or
one started with Docker (testcontainers) using compose/aerospike/aerospike.conf; skipped with the
reason when neither is available. The degraded mode without a server is covered in
tests/unit/storage/test_aerospike_degraded.py.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage import LocalCache, TableSpec, TieredStore
from storage.aerospike_store import AerospikeSettings, AerospikeStore

_CONF = Path(__file__).resolve().parents[2] / "compose" / "aerospike" / "aerospike.conf"
_IMAGE = "aerospike/aerospike-server:8.0"


def _docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # noqa: PLC0415

        client: Any = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[str, ...]]:
    env = os.environ.get("AEROSPIKE_HOSTS")
    if env:
        yield tuple(h.strip() for h in env.split(",") if h.strip())
        return
    if not _docker_reachable():
        pytest.skip("no Aerospike: set AEROSPIKE_HOSTS or run a Docker daemon")
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    container = (
        DockerContainer(_IMAGE)
        .with_exposed_ports(3000)
        .with_volume_mapping(str(_CONF), "/opt/aerospike/etc/aerospike.conf", "ro")
        .with_command("--config-file /opt/aerospike/etc/aerospike.conf")
    )
    with container:
        host = f"{container.get_container_host_ip()}:{container.get_exposed_port(3000)}"
        settings = AerospikeSettings(hosts=(host,))
        deadline = time.monotonic() + 60
        while True:  # the server takes a few seconds to open its namespace
            try:
                AerospikeStore(settings).table("probe")
            except Exception as e:
                if "not in namespace" in str(e):
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield (host,)


@pytest.fixture
def store(hosts: tuple[str, ...]) -> Iterator[AerospikeStore]:
    s = AerospikeStore(AerospikeSettings(hosts=hosts, read_total_timeout_ms=200))
    yield s
    s.close()


def _table(store: AerospikeStore, dim: int = 8) -> TableSpec:
    spec = TableSpec(f"t{uuid.uuid4().hex[:12]}", dim)
    store.create_table(spec)
    return spec


def test_round_trip_missing_ids_and_overwrites(store: AerospikeStore) -> None:
    spec = _table(store)
    ids = np.arange(0, 3000, 3, dtype=np.int64)
    rows = np.random.default_rng(0).standard_normal((ids.shape[0], 8)).astype(np.float32)
    store.put_many(spec.name, ids, rows)
    query = np.array([3, 4, 2997, 3, 0, 10**12], dtype=np.int64)
    got = store.get_many(spec.name, query)
    assert got.degraded is None
    np.testing.assert_array_equal(got.found, [True, False, True, True, True, False])
    np.testing.assert_array_equal(got.vectors[0], rows[1])
    np.testing.assert_array_equal(got.vectors[1], 0.0)
    store.put_many(spec.name, np.array([3, 3]), np.stack([rows[0], rows[5]]))  # last one wins
    np.testing.assert_array_equal(store.get_many(spec.name, np.array([3])).vectors[0], rows[5])
    assert store.table(spec.name) == spec


def test_a_new_client_reads_the_table_shape(store: AerospikeStore, hosts: tuple[str, ...]) -> None:
    spec = _table(store, dim=4)
    with AerospikeStore(AerospikeSettings(hosts=hosts)) as other:
        assert other.table(spec.name) == spec


def test_tiered_over_aerospike(store: AerospikeStore) -> None:
    spec = _table(store)
    ids = np.arange(5000, dtype=np.int64)
    store.put_many(spec.name, ids, np.ones((5000, 8), dtype=np.float32))
    tiered = TieredStore(store, LocalCache(1 << 20))
    for _ in range(3):
        got = tiered.get_many(spec.name, ids[:500])
        assert got.found.all()
    assert tiered.hit_ratio(spec.name) > 0.5
