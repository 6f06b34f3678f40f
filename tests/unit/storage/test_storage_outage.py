"""Storage outages while serving: the embed stage keeps answering and recovers by itself.

- Aerospike, through the stand-in client that fails as the real one was seen to
  (tests/unit/storage/aerospike_standin.py): stopped, paused (SIGSTOP), and restarted (empty
  record lists until the namespace rebalances). A serving loop runs the ``embed`` stage over a
  tiered store the whole time; every batch must be answered, degraded while the cluster is out
  and whole again soon after it is back.
- The embedded store: its files removed or made unreadable under a serving worker. The worker's
  memory map still holds the rows, so its answers stay whole; a worker started during the
  outage gets a clear ``StorageError`` (never a bare OSError), and one started after it works.

No broker; each test is bounded to a few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stages.builtin.embed import Embed
from stages.events import Event
from storage import EmbeddedStore, LocalCache, Store, TableSpec, TieredStore
from storage.aerospike_store import AerospikeSettings, AerospikeStore
from storage.errors import StorageError
from storage.synthetic import generate_table
from tests.unit.storage.aerospike_standin import StandInClient, State

ITEMS = 20_000
SPEC = TableSpec("outage_items", 4)


def _event(i: int, candidates: np.ndarray) -> Event:
    now = time.time() * 1000
    return Event(
        v=1,
        request_id=f"r{i}",
        user_id=i,
        deadline_ms=now + 200,
        created_at_ms=now,
        k=10,
        priority=0,
        candidates=candidates,
        exclude=np.zeros(0, dtype=np.int64),
        context={},
    )


class Serving(threading.Thread):
    """The embed stage in a loop, as a worker runs it; records what every batch got."""

    def __init__(self, stage: Embed, items: int) -> None:
        super().__init__(daemon=True)
        self.stage = stage
        self.items = items
        self.stop = threading.Event()
        self.log: list[tuple[float, int, int]] = []  # (time, degraded lookups, answered)
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = np.random.default_rng(1)
        i = 0
        try:
            while not self.stop.is_set():
                batch = [
                    _event(i + j, rng.integers(0, self.items, 200, dtype=np.int64))
                    for j in range(16)
                ]
                i += 16
                out = self.stage.process(batch)
                degraded = sum(int(getattr(e, "degraded", 0)) for e in out)
                self.log.append((time.monotonic(), degraded, len(out)))
                time.sleep(0.002)
        except BaseException as e:  # the point of the test: this must stay None
            self.error = e

    def since(self, t: float) -> list[tuple[float, int, int]]:
        return [r for r in list(self.log) if r[0] >= t]


def _recovered(serving: Serving, t: float, within: float) -> float:
    """Seconds from ``t`` until a batch came back whole; fails after ``within``."""
    deadline = t + within
    while time.monotonic() < deadline:
        whole = [r for r in serving.since(t) if r[1] == 0]
        if whole:
            return whole[0][0] - t
        time.sleep(0.01)
    pytest.fail(f"no whole answer within {within} s of the cluster's return")


@contextlib.contextmanager
def serving(store: Store) -> Iterator[Serving]:
    """The embed stage over ``store`` in a loop for the block, then ``store`` closed; whatever the
    stage raised fails the test."""
    loop = Serving(Embed(TieredStore(store, LocalCache(16 << 10)), table=SPEC.name), ITEMS)
    loop.start()
    try:
        yield loop
    finally:
        loop.stop.set()
        loop.join(timeout=5)
        store.close()
    assert loop.error is None, repr(loop.error)
    assert all(r[2] == 16 for r in loop.log)  # every batch answered, whole or degraded


def _aerospike(client: StandInClient) -> AerospikeStore:
    settings = AerospikeSettings(
        read_total_timeout_ms=200, breaker_failures=2, breaker_reset_s=0.05, breaker_max_reset_s=0.2
    )
    return AerospikeStore(settings, specs=[SPEC], client_factory=client.factory)


@pytest.mark.parametrize("outage", ["stopped", "paused", "rebalancing"])
def test_aerospike_outage_degrades_then_recovers_by_itself(outage: State) -> None:
    client = StandInClient.of(SPEC.name, range(ITEMS), latency_per_key_s=0.2e-6)
    with serving(_aerospike(client)) as loop:
        _recovered(loop, time.monotonic(), within=5.0)  # serving whole before the fault
        down = time.monotonic()
        client.state = outage
        time.sleep(0.6)
        during = loop.since(down + 0.25)  # a lookup already in flight may still come back
        assert during, "the stage stopped answering during the outage"
        assert all(r[1] > 0 for r in during)
        back = time.monotonic()
        client.state = "up"
        took = _recovered(loop, back, within=5.0)
    batches = len(loop.log)
    print(
        f"\n{outage}: {batches} batches answered, {len(during)} degraded during, "
        f"whole {took:.2f} s after"
    )


def test_aerospike_restart_cycle_under_load() -> None:
    """Stop, start into the rebalance window, rebalance: as the real server was restarted."""
    client = StandInClient.of(SPEC.name, range(ITEMS))
    with serving(_aerospike(client)) as loop:
        time.sleep(0.2)
        states: tuple[tuple[State, float], ...] = (("stopped", 0.4), ("rebalancing", 0.6))
        for state, hold in states:
            client.state = state
            time.sleep(hold)
        back = time.monotonic()
        client.state = "up"
        took = _recovered(loop, back, within=5.0)
    assert loop.log
    print(f"\nrestart cycle: {len(loop.log)} batches answered, whole {took:.2f} s after")


def _embedded(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    with EmbeddedStore(root, durable=False) as store:
        generate_table(store, SPEC, rows=ITEMS, seed=5)
    return root


def _unreadable(root: Path) -> None:
    """Root reads through any mode bits, so 'unreadable' is files that cannot be read as such."""
    meta = root / SPEC.name / "meta.json"
    meta.rename(root / "meta.json.bak")
    meta.mkdir()  # reading it now fails with IsADirectoryError


def _readable(root: Path) -> None:
    (root / SPEC.name / "meta.json").rmdir()
    (root / "meta.json.bak").rename(root / SPEC.name / "meta.json")


@pytest.mark.parametrize("fault", ["removed", "unreadable"])
def test_embedded_files_lost_under_a_serving_worker(tmp_path: Path, fault: str) -> None:
    root = _embedded(tmp_path)
    saved = tmp_path / "saved"
    with EmbeddedStore(root, mode="r") as reader, serving(reader) as loop:
        time.sleep(0.2)
        if fault == "removed":
            shutil.copytree(root / SPEC.name, saved)
            shutil.rmtree(root / SPEC.name)
        else:
            _unreadable(root)
        t = time.monotonic()
        time.sleep(0.4)
        assert loop.since(t), "the worker stopped answering"
        # a worker starting now is told clearly, in the storage package's own terms
        with EmbeddedStore(root, mode="r") as late, pytest.raises(StorageError) as info:
            late.get_many(SPEC.name, np.arange(3))
        assert SPEC.name in str(info.value) and str(root) in str(info.value)
        if fault == "removed":
            shutil.copytree(saved, root / SPEC.name)
        else:
            _readable(root)
        with EmbeddedStore(root, mode="r") as fresh:
            assert fresh.get_many(SPEC.name, np.arange(3)).found.all()
    assert all(r[1] == 0 for r in loop.log)  # the map kept the rows: not even degraded
