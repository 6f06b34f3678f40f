"""A user's stage of known cost, deployed by config like any other: it "calls a remote service"
for each event, sleeping ``batch_ms + event_ms x n`` for a batch of ``n`` (the GIL released), so
one consumer completes about ``1000 / event_ms`` events per busy second whatever the cores, and
a pipeline ``["ingest", {use = "tests.integration._slow_stage:Slow"}]`` needs a known number of
consumers for a given rate. Events pass through unchanged and are answered ``ok`` after it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from stages import BaseStage, Event
from stages.stage import Result


class Slow(BaseStage):
    name = "work"

    def __init__(self, event_ms: float = 10.0, batch_ms: float = 0.0) -> None:
        if event_ms < 0 or batch_ms < 0:
            raise ValueError("event_ms and batch_ms must be >= 0")
        self._event_s = event_ms / 1000.0
        self._batch_s = batch_ms / 1000.0

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        time.sleep(self._batch_s + self._event_s * len(batch))
        return list(batch)
