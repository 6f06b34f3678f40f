"""What carries envelopes into and out of a stage runner.

An `Envelope` pairs a value with the `Ticket` of the input it came from. Whoever ends an
envelope's journey (a Kafka producer on its delivery report, a collector in embedded mode) calls
``ticket.done()``; that is how the Kafka runtime commits an input offset only after its output is
acknowledged, while stages and in-memory queues stay ignorant of offsets.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol


class Ticket(Protocol):
    def done(self) -> None: ...


class Envelope(NamedTuple):
    value: Any
    ticket: Ticket | None = None


class Source(Protocol):
    """Where a runner takes its micro-batches from."""

    def get_batch(self, max_items: int, max_wait: float, /) -> list[Envelope] | None:
        """Up to ``max_items``, waiting at most ``max_wait`` s after the first; None once closed
        and empty (the runner's cue to finish)."""
        ...

    def depth(self) -> int: ...

    def close(self) -> None:
        """Stop taking new input; what is already buffered is still handed out."""
        ...


class Sink(Protocol):
    """Where a runner puts its results; ``put_many`` may block (that is the backpressure)."""

    def put_many(self, items: Sequence[Envelope], /) -> None: ...

    def close(self) -> None:
        """No more items will come; flush what is buffered."""
        ...


class ClosedError(RuntimeError):
    """Put into a queue that was closed: a runner kept producing after shutdown."""


class BoundedQueue:
    """The in-memory hand-over between two stages of one process.

    Whole batches move under one lock acquisition (``queue.Queue`` would take the lock per item).
    A put blocks while the queue holds ``capacity`` items or more, which slows the producer to the
    consumer's pace; a batch larger than the free room is still accepted whole so one oversized
    batch cannot deadlock the pair.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[Envelope] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put_many(self, items: Sequence[Envelope], /) -> None:
        if not items:
            return
        with self._cond:
            while len(self._items) >= self.capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ClosedError("put into a closed queue")
            self._items.extend(items)
            self._cond.notify_all()

    def get_batch(self, max_items: int, max_wait: float, /) -> list[Envelope] | None:
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._cond.wait()
            if len(self._items) < max_items and max_wait > 0 and not self._closed:
                deadline = time.monotonic() + max_wait
                while len(self._items) < max_items and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            n = min(max_items, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            self._cond.notify_all()
            return batch

    def depth(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class CallbackSink:
    """A terminal sink: hands values to a function, then marks their tickets done."""

    def __init__(self, fn: Callable[[list[Any]], None]) -> None:
        self._fn = fn

    def put_many(self, items: Sequence[Envelope], /) -> None:
        if not items:
            return
        self._fn([env.value for env in items])
        for env in items:
            if env.ticket is not None:
                env.ticket.done()

    def close(self) -> None:
        return None
