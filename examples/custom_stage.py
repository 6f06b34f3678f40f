"""A stage of your own, tested without a broker.

Boosts the scores of candidates a business rule favours (here: even item ids) before ``rank``.
Run it:  python examples/custom_stage.py
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from stages import BaseStage, Event, StageHarness
from stages.stage import Result


class BoostEven(BaseStage):
    name = "boost"

    def __init__(self, factor: float = 1.5) -> None:
        self.factor = factor

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        out: list[Result] = []
        for e in batch:
            if e.scores is None:
                out.append(msgspec.structs.replace(e, status="invalid", reason="no scores"))
                continue
            boost = np.where(e.candidates % 2 == 0, self.factor, 1.0).astype(np.float32)
            out.append(msgspec.structs.replace(e, scores=e.scores * boost))
        return out


def main() -> None:
    now_ms = 1e15  # far future deadline: nothing expires in this example
    event = Event(
        v=1,
        request_id="example-1",
        user_id=7,
        deadline_ms=now_ms,
        created_at_ms=0.0,
        k=2,
        priority=0,
        candidates=np.array([1, 2, 3], dtype=np.int64),
        exclude=np.zeros(0, dtype=np.int64),
        context={},
        scores=np.array([0.5, 0.4, 0.1], dtype=np.float32),
    )
    result = StageHarness(BoostEven()).run([event])
    print(result.forwarded[0].scores.tolist())  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
