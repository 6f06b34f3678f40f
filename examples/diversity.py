"""A diversity re-ranker as a stage: at most ``max_per_category`` items of one category at the top.

Deploy it by config alone between ``score`` and ``rank``:

    [pipeline]
    stages = [
      "ingest", "features", "embed", "score",
      { use = "examples.diversity:CapPerCategory",
        params = { categories = "item_categories.csv", max_per_category = 2 } },
      "rank",
    ]

The category table is a CSV of ``item_id,category`` rows (a header line is skipped) or a
``.npy`` array indexed by item id; items it does not list are never capped. Candidates past the
cap of their category are demoted below every candidate within its cap (``drop = true`` removes
them from the answer instead), so ``rank``'s top-k mixes categories while keeping the model's
order inside each. Two flat sorts rank every candidate of the micro-batch within its (request,
category) group.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
import numpy.typing as npt

from stages import BaseStage, Event
from stages.stage import Result

DEMOTION = np.float32(1e4)
"""Subtracted once per cap a candidate is past: far below any calibrated score."""


def read_categories(path: str | Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(sorted item ids, their categories) from an ``item_id,category`` CSV, or from a ``.npy``
    array holding the category of item ``i`` at index ``i`` (dense ids, as exported by most
    feature stores)."""
    if str(path).endswith(".npy"):
        dense = np.load(path, allow_pickle=False).astype(np.int64)
        return np.arange(len(dense), dtype=np.int64), dense
    ids: list[int] = []
    cats: list[int] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.split("#", 1)[0].split(",")]
        if cells == [""]:
            continue
        try:
            item, cat = int(cells[0]), int(cells[1])
        except (ValueError, IndexError):
            if n == 1:  # a header
                continue
            raise ValueError(f"{path}:{n}: expected item_id,category, got {line!r}") from None
        ids.append(item)
        cats.append(cat)
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    return np.asarray(ids, dtype=np.int64)[order], np.asarray(cats, dtype=np.int64)[order]


class CapPerCategory(BaseStage):
    """Demotes (or drops) candidates beyond ``max_per_category`` in their category, by score."""

    name = "diversity"

    def __init__(self, categories: str, max_per_category: int = 2, drop: bool = False) -> None:
        if max_per_category < 1:
            raise ValueError("max_per_category must be >= 1")
        self.ids, self.cats = read_categories(categories)
        self.dense = bool(len(self.ids)) and int(self.ids[-1]) == len(self.ids) - 1
        self.width = int(self.cats.max()) + 2 if len(self.cats) else 1
        self.cap = max_per_category
        self.drop = drop

    def category(self, items: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Each item's category, -1 where the table does not list it."""
        n = len(self.ids)
        if not n:
            return np.full(len(items), -1, dtype=np.int64)
        if self.dense:  # ids are 0..n-1: index straight in
            inside = (items >= 0) & (items < n)
            return np.where(inside, self.cats[np.where(inside, items, 0)], -1)
        at = np.minimum(np.searchsorted(self.ids, items), n - 1)
        return np.where(self.ids[at] == items, self.cats[at], -1)

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        ready = [e for e in batch if e.scores is not None]
        if not ready:
            return list(batch)  # rank dead-letters what has no scores, with the reason
        counts = np.fromiter((len(e.candidates) for e in ready), np.int64, len(ready))
        items = np.concatenate([e.candidates for e in ready])
        scores = np.concatenate([e.scores for e in ready]).astype(np.float32)  # type: ignore[misc]
        row = np.repeat(np.arange(len(ready)), counts)
        cat = self.category(items)
        # By (request, category), best score first: a stable sort on the group after one on the
        # score (two flat argsorts beat a three-key lexsort by ~3x here).
        group = row * self.width + (cat + 1)
        by_score = np.argsort(-scores, kind="stable")
        order = by_score[np.argsort(group[by_score], kind="stable")]
        g = group[order]
        new_group = np.ones(len(order), dtype=bool)
        new_group[1:] = g[1:] != g[:-1]
        starts = np.flatnonzero(new_group)
        place = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
        within = np.empty_like(place)
        within[order] = place
        past = np.where(cat >= 0, within // self.cap, 0).astype(np.float32)
        if self.drop:
            adjusted = np.where(past > 0, np.float32(-np.inf), scores)
        else:
            adjusted = scores - past * DEMOTION
        out: dict[int, Result] = {}
        start = 0
        for e, n in zip(ready, counts.tolist(), strict=True):
            out[id(e)] = msgspec.structs.replace(e, scores=adjusted[start : start + n])
            start += n
        return [out.get(id(e), e) for e in batch]
