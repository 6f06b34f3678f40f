"""The Aerospike store's degraded mode and recovery, with no server.

Two kinds of failing backend, both real as far as the store can tell: the official client
pointed at a closed loopback port (it fails for real, in its own C code), and the stand-in client
(tests/unit/storage/aerospike_standin.py) that fails as the real one was seen to, so the breaker
can be walked from closed to open to half-open and back with a fake clock.
"""

from __future__ import annotations

import socket
from typing import Any

import aerospike
import numpy as np
import pytest
from prometheus_client import REGISTRY

from storage import LocalCache, TableSpec, TieredStore
from storage.aerospike_store import AerospikeSettings, AerospikeStore
from storage.breaker import Breaker
from storage.errors import BackendUnavailableError
from tests.unit.storage.aerospike_standin import StandInClient

SPEC = TableSpec("emb_items", 4)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the breaker alone -------------------------------------------------------------------------


def test_breaker_opens_probes_and_closes() -> None:
    clock = Clock()
    b = Breaker(failures=2, reset_after=1.0, max_reset_after=4.0, clock=clock)
    assert b.allow()
    assert b.state == "closed"
    b.failure()
    assert b.allow()  # one failure is not a pattern
    b.failure()
    assert str(b.state) == "open"
    assert not b.allow()
    clock.now += 1.0
    assert str(b.state) == "half_open"
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    b.failure()  # the probe failed: open for twice as long
    clock.now += 1.5
    assert not b.allow()
    clock.now += 0.5
    assert b.allow()
    b.success()
    assert str(b.state) == "closed"
    assert b.allow()
    assert b.allow()


# -- the real client, nothing listening -------------------------------------------------------


def test_an_unreachable_cluster_degrades_instead_of_failing() -> None:
    settings = AerospikeSettings(
        hosts=(f"127.0.0.1:{_closed_port()}",), connect_timeout_ms=200, breaker_failures=2
    )
    made = []

    def factory(conf: dict[str, Any]) -> Any:
        made.append(conf)
        return aerospike.client(conf)

    store = AerospikeStore(settings, specs=[SPEC], client_factory=factory)
    before = _metric("jizhi_store_degraded_total", table=SPEC.name)
    for _ in range(5):
        got = store.get_many(SPEC.name, np.array([3, 1, 3]))
        assert not got.found.any()
        np.testing.assert_array_equal(got.vectors, 0.0)
        assert got.degraded is not None and got.degraded.all()
    assert len(made) == 2  # then the breaker stops knocking: no connect per batch
    assert _metric("jizhi_store_degraded_total", table=SPEC.name) - before == 15
    assert _metric("jizhi_store_backend_up", backend="aerospike") == 0.0
    assert (
        _metric("jizhi_store_backend_errors_total", backend="aerospike", error="ConnectionError")
        >= 2
    )
    with pytest.raises(BackendUnavailableError) as info:  # writes must not pretend
        store.put_many(SPEC.name, np.array([1]), np.ones((1, 4), np.float32))
    assert info.value.retriable
    with pytest.raises(BackendUnavailableError):  # a table never seen cannot even degrade
        store.table("never_declared")
    store.close()


# -- recovery ----------------------------------------------------------------------------------


def test_the_store_recovers_by_itself_when_the_cluster_returns() -> None:
    clock = Clock()
    client = StandInClient.of(SPEC.name, range(1, 3), state="paused")
    settings = AerospikeSettings(breaker_failures=2, breaker_reset_s=1.0)
    store = AerospikeStore(settings, specs=[SPEC], client_factory=client.factory, clock=clock)
    for _ in range(4):
        assert store.get_many(SPEC.name, np.array([1, 2])).degraded is not None
    assert len(client.calls) == 2
    assert str(store.breaker.state) == "open"
    client.state = "up"
    assert store.get_many(SPEC.name, np.array([1])).degraded is not None  # still open
    clock.now += 1.0  # half-open: the next lookup is the probe
    got = store.get_many(SPEC.name, np.array([2, 9, 1]))
    assert got.degraded is None
    np.testing.assert_array_equal(got.found, [True, False, True])
    np.testing.assert_array_equal(got.vectors[:, 0], [2, 0, 1])
    assert str(store.breaker.state) == "closed"
    assert _metric("jizhi_store_backend_up", backend="aerospike") == 1.0


def test_cache_hits_are_served_while_the_backend_is_down() -> None:
    clock = Clock()
    client = StandInClient.of(SPEC.name, range(10))
    backend = AerospikeStore(
        AerospikeSettings(breaker_failures=1),
        specs=[SPEC],
        client_factory=client.factory,
        clock=clock,
    )
    store = TieredStore(backend, LocalCache(1 << 20))
    store.get_many(SPEC.name, np.array([1, 2, 3]))  # warms the cache
    client.state = "stopped"
    got = store.get_many(SPEC.name, np.array([1, 7, 2, 8]))
    np.testing.assert_array_equal(got.found, [True, False, True, False])
    np.testing.assert_array_equal(got.vectors[:, 0], [1, 0, 2, 0])
    assert got.degraded is not None
    np.testing.assert_array_equal(got.degraded, [False, True, False, True])
    calls = len(client.calls)
    assert store.get_many(SPEC.name, np.array([1, 2, 3])).degraded is None  # all hits
    assert len(client.calls) == calls
