"""The in-process runtime: micro-batching, backpressure, deadline expiry, drain, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from stages.events import DeadLetter, Event, Response
from stages.runtime import BatchPolicy, BoundedQueue, CallbackSink, Chain, Envelope
from stages.runtime.channel import ClosedError
from stages.stage import BaseStage, Result


def ev(i: int, *, budget_ms: float = 60_000.0) -> Event:
    now = time.time() * 1000
    return Event(
        v=1,
        request_id=f"r{i}",
        user_id=i,
        deadline_ms=now + budget_ms,
        created_at_ms=now,
        k=1,
        priority=0,
        candidates=np.array([i], dtype=np.int64),
        exclude=np.zeros(0, dtype=np.int64),
        context={},
    )


class Recorder(BaseStage):
    """Passes events through, remembering batch sizes; optionally slow or failing."""

    def __init__(self, name: str, delay: float = 0.0, fail_on: str = "") -> None:
        self.name = name
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[int] = []
        self.seen: list[str] = []
        self.opened = self.closed = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        self.batches.append(len(batch))
        self.seen.extend(e.request_id for e in batch)
        if self.delay:
            time.sleep(self.delay)
        if any(e.request_id == self.fail_on for e in batch):
            raise RuntimeError("infrastructure broke")
        return list(batch)


class Collect:
    def __init__(self) -> None:
        self.answers: list[Response] = []
        self.dead: list[DeadLetter] = []
        self.lock = threading.Lock()

    def add(self, rs: list[Response]) -> None:
        with self.lock:
            self.answers.extend(rs)

    def add_dead(self, ds: list[DeadLetter]) -> None:
        with self.lock:
            self.dead.extend(ds)


MODES = pytest.mark.parametrize("threads", ["per_stage", "one"])


def chain_of(stages: list[BaseStage], source: BoundedQueue, c: Collect, **kw: object) -> Chain:
    return Chain(
        stages,  # type: ignore[arg-type]
        source,
        forward=None,
        answers=CallbackSink(c.add),
        dead=CallbackSink(c.add_dead),
        pipeline="test",
        **kw,  # type: ignore[arg-type]
    )


def test_queue_get_batch_respects_size_and_wait() -> None:
    q = BoundedQueue(100)
    q.put_many([Envelope(i) for i in range(10)])
    assert [e.value for e in q.get_batch(4, 0.0) or []] == [0, 1, 2, 3]
    t0 = time.monotonic()
    batch = q.get_batch(100, 0.05)
    assert batch is not None and len(batch) == 6
    assert time.monotonic() - t0 >= 0.04  # waited for more before closing the batch
    q.close()
    assert q.get_batch(10, 1.0) is None


def test_queue_put_blocks_when_full_until_consumed() -> None:
    q = BoundedQueue(2)
    q.put_many([Envelope(0), Envelope(1)])
    done = threading.Event()

    def put() -> None:
        q.put_many([Envelope(2)])
        done.set()

    threading.Thread(target=put, daemon=True).start()
    assert not done.wait(0.1), "put into a full queue must block"
    q.get_batch(1, 0.0)
    assert done.wait(1.0)
    q.close()
    with pytest.raises(ClosedError):
        q.put_many([Envelope(3)])


@MODES
def test_chain_batches_and_answers_every_event_once_in_order(threads: str) -> None:
    src = BoundedQueue(1000)
    a, b = Recorder("a"), Recorder("b")
    c = Collect()
    chain = chain_of(
        [a, b], src, c, policies={"a": BatchPolicy(16, 5), "b": BatchPolicy(16, 5)}, threads=threads
    )
    chain.start()
    src.put_many([Envelope(ev(i)) for i in range(200)])
    src.close()
    assert chain.join(5)
    assert [r.request_id for r in c.answers] == [f"r{i}" for i in range(200)]
    assert max(a.batches) == 16 and sum(a.batches) == 200
    assert a.opened and a.closed and b.closed
    assert all(set(r.stage_ms) == {"a", "b"} for r in c.answers)


def test_backpressure_bounds_every_in_memory_queue() -> None:
    src = BoundedQueue(8)
    slow = Recorder("slow", delay=0.01)
    c = Collect()
    chain = chain_of(
        [Recorder("fast"), slow], src, c, policies={"slow": BatchPolicy(4, 0)}, queue_capacity=8
    )
    chain.start()
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, chain.queues[0].depth())
            time.sleep(0.001)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    for i in range(0, 120, 4):
        src.put_many([Envelope(ev(j)) for j in range(i, i + 4)])
    src.close()
    assert chain.join(10)
    stop.set()
    assert len(c.answers) == 120
    # bounded: a queue holds at most its capacity plus one batch accepted whole
    assert peak <= 8 + 64


@MODES
def test_expired_events_are_answered_without_reaching_the_stage(threads: str) -> None:
    src = BoundedQueue(100)
    a = Recorder("a")
    c = Collect()
    chain = chain_of([a], src, c, threads=threads)
    chain.start()
    src.put_many([Envelope(ev(0)), Envelope(ev(1, budget_ms=-5)), Envelope(ev(2))])
    src.close()
    assert chain.join(5)
    status = {r.request_id: (r.status, r.reason) for r in c.answers}
    assert status["r1"] == ("expired", "deadline passed before a")
    assert status["r0"][0] == status["r2"][0] == "ok"
    assert "r1" not in a.seen


@MODES
def test_shutdown_drains_in_flight_work(threads: str) -> None:
    src = BoundedQueue(1000)
    c = Collect()
    stages = [Recorder("a", delay=0.002), Recorder("b", delay=0.002), Recorder("c", delay=0.002)]
    chain = chain_of(
        stages, src, c, policies={n: BatchPolicy(8, 1) for n in "abc"}, threads=threads
    )
    chain.start()
    src.put_many([Envelope(ev(i)) for i in range(300)])
    src.close()  # close while most events are still queued or in flight
    assert chain.join(10)
    assert len(c.answers) == 300
    assert len({r.request_id for r in c.answers}) == 300


@MODES
def test_stage_exception_stops_the_chain_without_hanging(threads: str) -> None:
    src = BoundedQueue(4)
    c = Collect()
    chain = chain_of(
        [Recorder("a"), Recorder("b", fail_on="r5")],
        src,
        c,
        policies={"a": BatchPolicy(1, 0), "b": BatchPolicy(1, 0)},
        threads=threads,
    )
    chain.start()
    with pytest.raises(ClosedError):
        for i in range(10_000):
            src.put_many([Envelope(ev(i))])
    assert chain.join(5)
    assert isinstance(chain.error, RuntimeError)
    assert "r5" not in {r.request_id for r in c.answers}


class Shrinker(BaseStage):
    name = "shrink"

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        return list(batch[:-1])


@MODES
def test_contract_violation_is_an_error_not_silent_loss(threads: str) -> None:
    src = BoundedQueue(10)
    c = Collect()
    chain = chain_of([Shrinker()], src, c, threads=threads)
    chain.start()
    src.put_many([Envelope(ev(0)), Envelope(ev(1))])
    src.close()
    assert chain.join(5)
    assert chain.error is not None and "returned 1 results for 2 inputs" in str(chain.error)
