"""Run a stage without any transport: the test harness shipped with the stage API.

``StageHarness(stage).run(inputs)`` pushes the inputs through the real `StageRunner` routing, so a
test sees exactly what a deployment would emit: forwarded events, answers, dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stages.events import DeadLetter, Event, Response
from stages.runtime.channel import Envelope
from stages.runtime.runner import BatchPolicy, Routes, StageRunner
from stages.stage import Stage, takes_of


class _ListSink:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def put_many(self, items: Sequence[Envelope], /) -> None:
        self.items.extend(env.value for env in items)

    def close(self) -> None:
        return None


class _NoSource:
    def get_batch(self, max_items: int, max_wait: float, /) -> list[Envelope] | None:
        return None

    def depth(self) -> int:
        return 0

    def close(self) -> None:
        return None


@dataclass
class HarnessResult:
    forwarded: list[Event] = field(default_factory=list)
    answers: list[Response] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class StageHarness:
    """Feeds micro-batches to one stage and collects where each result went."""

    def __init__(
        self,
        stage: Stage[Any],
        *,
        last: bool = False,
        takes_events: bool | None = None,
        batch_size: int = 64,
        clock: Callable[[], float] = time.time,
        pipeline: str = "harness",
    ) -> None:
        self._forward = _ListSink()
        self._answers = _ListSink()
        self._dead = _ListSink()
        self._batch_size = batch_size
        self._runner = StageRunner(
            stage,
            _NoSource(),
            Routes(forward=None if last else self._forward, answers=self._answers, dead=self._dead),
            pipeline=pipeline,
            policy=BatchPolicy(max_size=batch_size, max_wait_ms=0),
            takes_events=takes_of(stage) == "events" if takes_events is None else takes_events,
            clock=clock,
        )

    def run(self, inputs: Sequence[Any]) -> HarnessResult:
        self._forward.items.clear()
        self._answers.items.clear()
        self._dead.items.clear()
        for i in range(0, len(inputs), self._batch_size):
            self._runner.handle([Envelope(x) for x in inputs[i : i + self._batch_size]])
        return HarnessResult(
            forwarded=list(self._forward.items),
            answers=list(self._answers.items),
            dead=list(self._dead.items),
        )
