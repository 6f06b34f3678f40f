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
    b = len(events)
    counts = np.fromiter((len(e.candidates) for e in events), np.int64, b)
    width = int(counts.max())
    cand = np.concatenate([e.candidates for e in events])
    flat = np.concatenate([e.scores for e in events]).astype(np.float32)
    if bool((counts == width).all()):  # the usual case: a reshape, no scatter
        ids = cand.reshape(b, width)
        matrix = flat.reshape(b, width).copy()
    else:
        rows = np.repeat(np.arange(b), counts)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        ids = np.full((b, width), -1, dtype=np.int64)  # ids are >= 0: -1 pads
        ids[rows, cols] = cand
        matrix = np.full((b, width), -np.inf, dtype=np.float32)
        matrix[rows, cols] = flat

    matrix[_repeats(ids)] = -np.inf
    for r, e in enumerate(events):
        if len(e.exclude):  # rare, so a loop over only these events
            matrix[r, np.isin(ids[r], e.exclude)] = -np.inf

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
    valid = np.isfinite(best_scores).sum(axis=1).tolist()

    return [
        (best_ids[r, :n].copy(), best_scores[r, :n].copy())
        for r, n in enumerate(min(e.k, v) for e, v in zip(events, valid, strict=True))
    ]


_POS_BITS = 16  # positions < 65,536 (requests carry at most MAX_CANDIDATES)
_FAST_ID_LIMIT = 1 << (63 - _POS_BITS)


def _repeats(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True at every repeat of an id within its own row (the first occurrence stays False).

    Sorting each row by (id, position) puts a repeat right after its earlier copy. When ids fit
    in 47 bits, (id, position) packs into one int64 and a plain ``np.sort`` per row does it, about
    10x faster than a stable argsort; larger ids take the argsort.
    """
    repeat = np.zeros(ids.shape, dtype=bool)
    if ids.size and int(ids.max()) < _FAST_ID_LIMIT:
        positions = np.arange(ids.shape[1], dtype=np.int64)
        keys = np.sort((ids << _POS_BITS) | positions, axis=1)
        same = (keys[:, 1:] >> _POS_BITS) == (keys[:, :-1] >> _POS_BITS)
        rows, cols = np.nonzero(same)
        repeat[rows, keys[rows, cols + 1] & ((1 << _POS_BITS) - 1)] = True
        return repeat
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    repeat_sorted = np.zeros(ids.shape, dtype=bool)
    repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    return repeat


__all__ = ["DeadLetter", "Rank", "top_k"]
