"""Consecutive stages in one process, joined by bounded in-memory queues (JiZhi's in-process
pipeline): no serialization between them, and a slow stage slows its upstream through the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stages.errors import JizhiError
from stages.runtime.channel import BoundedQueue, Sink, Source
from stages.runtime.runner import BatchPolicy, Routes, StageRunner
from stages.stage import Stage


class ChainError(JizhiError):
    """A stage of the chain stopped on an exception; the first one is the cause."""


class Chain:
    """Runs ``stages`` in order from ``source``; the last stage's output goes to ``forward`` (the
    next worker) or, when ``forward`` is None, to ``answers``.

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not stages:
            raise ValueError("a chain needs at least one stage")
        policies = policies or {}
        self.queues: list[BoundedQueue] = []
        self.runners: list[StageRunner] = []
        upstream: Source = source
        for i, stage in enumerate(stages):
            last = i == len(stages) - 1
            nxt: Sink | None
            if last:
                nxt = forward
            else:
                queue = BoundedQueue(queue_capacity)
                self.queues.append(queue)
                nxt = queue
            runner = StageRunner(
                stage,
                upstream,
                Routes(forward=nxt, answers=answers, dead=dead),
                pipeline=pipeline,
                policy=policies.get(stage.name, BatchPolicy()),
                takes_events=first_takes_events or i > 0,
                decode=decode_first if i == 0 else None,
                clock=clock,
            )
            self.runners.append(runner)
            if not last:
                upstream = self.queues[-1]

    def start(self) -> None:
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
        """Events waiting in front of each stage after the first."""
        return {r.stage.name: q.depth() for r, q in zip(self.runners[1:], self.queues, strict=True)}
