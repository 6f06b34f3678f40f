"""Consecutive stages in one process, joined by bounded in-memory queues (JiZhi's in-process
pipeline): no serialization between them, and a slow stage slows its upstream through the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from stages.errors import JizhiError
from stages.runtime.channel import BoundedQueue, Envelope, Sink, Source
from stages.runtime.runner import BatchPolicy, Routes, StageRunner
from stages.stage import Stage


class ChainError(JizhiError):
    """A stage of the chain stopped on an exception; the first one is the cause."""


Threads = Literal["per_stage", "one"]


class _Direct:
    """Hands a batch straight to the next runner in the caller's thread (the ``one`` mode)."""

    def __init__(self, runner: StageRunner) -> None:
        self._runner = runner
        self._opened = False

    def put_many(self, items: Sequence[Envelope], /) -> None:
        if not self._opened:
            self._runner.stage.open()  # in the thread that will call process, as promised
            self._opened = True
        self._runner.handle(items)

    def close(self) -> None:
        try:
            if self._opened:
                self._runner.stage.close()
        finally:
            if self._runner.routes.forward is not None:
                self._runner.routes.forward.close()


class Chain:
    """Runs ``stages`` in order from ``source``; the last stage's output goes to ``forward`` (the
    next worker) or, when ``forward`` is None, to ``answers``.

    ``threads="per_stage"`` gives each stage a thread and a bounded queue in front, so stages
    overlap wherever numpy releases the GIL; ``threads="one"`` runs the whole chain on each batch
    in a single thread, which avoids the GIL hand-offs between threads and is faster when cores
    are few. The stages and their routing are the same either way.

    Shutdown drains: closing the source lets the first runner finish what it holds, then close the
    queue behind it, and so on down the chain, so every accepted event is finished before ``join``
    returns.
    """

    def __init__(
        self,
        stages: Sequence[Stage[Any]],
        source: Source,
        *,
        forward: Sink | None,
        answers: Sink,
        dead: Sink,
        pipeline: str,
        policies: Mapping[str, BatchPolicy] | None = None,
        queue_capacity: int = 1024,
        first_takes_events: bool = True,
        decode_first: Callable[[Any], Any] | None = None,
        threads: Threads = "per_stage",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not stages:
            raise ValueError("a chain needs at least one stage")
        policies = policies or {}
        self.threads = threads
        self.queues: list[BoundedQueue] = []

        def runner(i: int, upstream: Source, nxt: Sink | None) -> StageRunner:
            return StageRunner(
                stages[i],
                upstream,
                Routes(forward=nxt, answers=answers, dead=dead),
                pipeline=pipeline,
                policy=policies.get(stages[i].name, BatchPolicy()),
                takes_events=first_takes_events or i > 0,
                decode=decode_first if i == 0 else None,
                clock=clock,
            )

        last = len(stages) - 1
        if threads == "one":
            # Built back to front: each runner hands its output straight to the next one.
            reverse: list[StageRunner] = []
            nxt: Sink | None = forward
            for i in range(last, -1, -1):
                reverse.append(runner(i, source, nxt))  # only the first one reads the source
                nxt = _Direct(reverse[-1])
            self.runners = reverse[::-1]
            return
        self.queues = [BoundedQueue(queue_capacity) for _ in range(last)]
        inputs: list[Source] = [source, *self.queues]
        outputs: list[Sink | None] = [*self.queues, forward]
        self.runners = [runner(i, inputs[i], outputs[i]) for i in range(len(stages))]

    def start(self) -> None:
        if self.threads == "one":
            self.runners[0].start()
            return
        for runner in reversed(self.runners):
            runner.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every runner to finish; False if some are still running at the timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        for runner in self.runners:
            left = None if end is None else max(0.0, end - time.monotonic())
            if not runner.join(left):
                return False
        return True

    @property
    def error(self) -> BaseException | None:
        for runner in self.runners:
            if runner.error is not None:
                return runner.error
        return None

    def raise_error(self) -> None:
        err = self.error
        if err is not None:
            raise ChainError(f"a stage of the chain failed: {err!r}") from err

    def depths(self) -> dict[str, int]:
        """Events waiting in front of each stage after the first (none in ``one`` mode)."""
        if not self.queues:
            return {}
        return {r.stage.name: q.depth() for r, q in zip(self.runners[1:], self.queues, strict=True)}
