"""rank: top-k per request after the business rules, vectorized over the batch.

Rules: an id listed twice among the candidates counts once (its first position), ids in the
request's ``exclude`` list are never returned, and each request gets its own ``k``. Scores are laid
out as a (requests x max candidates) matrix padded with -inf so a single ``argpartition`` serves the
whole batch; ties rank by candidate position, so answers are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt

from stages.events import DeadLetter, Event
from stages.stage import BaseStage, Result


class Rank(BaseStage):
    """Attaches ``items`` and ``top_scores``: the request's best candidates, best first."""

    name = "rank"

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        out: list[Result | None] = [None] * len(batch)
        ready = []
        for i, e in enumerate(batch):
            if e.scores is None or len(e.scores) != len(e.candidates):
                out[i] = DeadLetter(
                    stage=self.name,
                    reason="event has no scores for its candidates: the score stage must run first",
                    payload=b"",
                    request_id=e.request_id,
                    user_id=e.user_id,
                )
            else:
                ready.append(i)
        if ready:
            events = [batch[i] for i in ready]
            for i, (items, scores) in zip(ready, top_k(events), strict=True):
                out[i] = msgspec.structs.replace(batch[i], items=items, top_scores=scores)
        return [r for r in out if r is not None]


def top_k(
    events: Sequence[Event],
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
    """Per event: (item ids, scores) of its ``k`` best admissible candidates."""
    counts = np.fromiter((len(e.candidates) for e in events), np.int64, len(events))
    b, width = len(events), int(counts.max())
    rows = np.repeat(np.arange(b), counts)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    cand = np.concatenate([e.candidates for e in events])
    flat = np.concatenate([e.scores for e in events]).astype(np.float32)

    keep = _first_occurrence(rows, cand)
    starts = np.cumsum(counts) - counts
    for r, e in enumerate(events):
        if len(e.exclude):  # rare, so a loop over only these events
            s, n = int(starts[r]), int(counts[r])
            keep[s : s + n] &= ~np.isin(cand[s : s + n], e.exclude)
    flat = np.where(keep, flat, -np.inf).astype(np.float32)

    matrix = np.full((b, width), -np.inf, dtype=np.float32)
    matrix[rows, cols] = flat
    ids = np.zeros((b, width), dtype=np.int64)
    ids[rows, cols] = cand

    kmax = min(width, max(e.k for e in events))
    if kmax < width:
        part = np.argpartition(-matrix, kmax - 1, axis=1)[:, :kmax]
        part.sort(axis=1)  # position order first, so the stable sort below breaks ties by position
    else:
        part = np.broadcast_to(np.arange(width), (b, width)).copy()
    top = np.take_along_axis(matrix, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    best_cols = np.take_along_axis(part, order, axis=1)
    best_scores = np.take_along_axis(top, order, axis=1)
    best_ids = np.take_along_axis(ids, best_cols, axis=1)
    valid = np.isfinite(best_scores)

    result = []
    for r, e in enumerate(events):
        n = min(e.k, int(valid[r].sum()))
        result.append((best_ids[r, :n].copy(), best_scores[r, :n].copy()))
    return result


def _first_occurrence(
    rows: npt.NDArray[np.int64], cand: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """False for every repeat of an id within its own request.

    A stable sort by id keeps equal ids in their original (request, position) order, so a repeat
    within one request sits right after an earlier copy from the same request: one single-key
    sort instead of a three-key lexsort.
    """
    order = np.argsort(cand, kind="stable")
    c, r = cand[order], rows[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (c[1:] == c[:-1]) & (r[1:] == r[:-1])
    keep = np.ones(len(order), dtype=bool)
    keep[order[repeat]] = False
    return keep


__all__ = ["DeadLetter", "Rank", "top_k"]
