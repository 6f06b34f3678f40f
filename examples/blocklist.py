"""A business rule as a stage: never recommend blocklisted items (recalled, out of stock, banned).

Deploy it by config alone, right after ingest, so blocked items cost no embedding lookups and no
scoring:

    [pipeline]
    stages = [
      "ingest",
      { use = "examples.blocklist:Blocklist", params = { path = "blocklist.csv" } },
      "features", "embed", "score", "rank",
    ]

The table is a text file of item ids, one per line (a header line, blank lines and ``#`` comments
are skipped; with commas, the first column is the id), read once when the stage is built. The
stage is vectorized: one binary search over every candidate of the micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from stages import BaseStage, Event
from stages.stage import Result


def read_ids(path: str | Path) -> npt.NDArray[np.int64]:
    """Sorted unique item ids from a one-column (or first-column) text table."""
    ids: list[int] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        cell = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not cell:
            continue
        try:
            ids.append(int(cell))
        except ValueError:
            if n == 1:  # a header
                continue
            raise ValueError(f"{path}:{n}: {cell!r} is not an item id") from None
    return np.unique(np.asarray(ids, dtype=np.int64))


class Blocklist(BaseStage):
    """Drops blocklisted candidates; a request whose candidates are all blocked is answered with
    no items (they are excluded, since a request keeps at least one candidate)."""

    name = "blocklist"

    def __init__(self, path: str) -> None:
        self.blocked = read_ids(path)

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        if not batch or not len(self.blocked):
            return list(batch)
        counts = np.fromiter((len(e.candidates) for e in batch), np.int64, len(batch))
        cand = np.concatenate([e.candidates for e in batch])
        at = np.minimum(np.searchsorted(self.blocked, cand), len(self.blocked) - 1)
        hit = self.blocked[at] == cand  # a binary search beats np.isin's sort of both sides
        if not hit.any():
            return list(batch)
        per_event = np.add.reduceat(hit.astype(np.int64), np.cumsum(counts) - counts)
        out: list[Result] = []
        start = 0
        for e, n, blocked in zip(batch, counts.tolist(), per_event.tolist(), strict=True):
            mask = hit[start : start + n]
            start += n
            if not blocked:
                out.append(e)
            elif blocked < n:
                out.append(msgspec.structs.replace(e, candidates=e.candidates[~mask]))
            else:
                exclude = np.union1d(e.exclude, e.candidates)
                out.append(msgspec.structs.replace(e, exclude=exclude))
        return out
