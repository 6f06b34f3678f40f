"""score: one forward pass of the model over every candidate of every request in the batch.

Batching across requests is the point: a 200-candidate request alone leaves numpy's matmul mostly
idle; 64 requests give it 12,800 rows at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from stages.events import DeadLetter, Event
from stages.model import RankingModel
from stages.stage import BaseStage, Result
from storage import ResultCache


class Score(BaseStage):
    """Attaches ``scores`` (one per candidate) from the ranking model, and drops the user and
    item vectors it consumed."""

    name = "score"

    def __init__(self, model: RankingModel, *, towers: ResultCache | None = None) -> None:
        """``towers`` reuses user-tower outputs across requests of the same user and context;
        worth it only when the tower is expensive (see docs/benchmarks.md)."""
        self._model = model
        self._towers = towers

    def process(self, batch: Sequence[Event], /) -> list[Result]:
        out: list[Result | None] = [None] * len(batch)
        ready: list[int] = []
        want_u, want_i = self._model.user_input_dim, self._model.shape.item_dim
        for i, e in enumerate(batch):
            problem = _check(e, want_u, want_i)
            if problem:
                out[i] = DeadLetter(
                    stage=self.name,
                    reason=problem,
                    payload=b"",
                    request_id=e.request_id,
                    user_id=e.user_id,
                )
            else:
                ready.append(i)
        if ready:
            events = [batch[i] for i in ready]
            counts = np.fromiter((len(e.candidates) for e in events), np.int64, len(events))
            users = np.stack([e.user_vec for e in events])  # type: ignore[misc]
            items = np.concatenate([e.item_vecs for e in events])
            if self._towers is None:
                scores = self._model.score(users, items, counts)
            else:
                uids = np.fromiter((e.user_id for e in events), np.int64, len(events))
                u = self._towers.get_or_compute(
                    self._model.version, uids, users, self._model.user_tower
                )
                scores = self._model.score_towers(u, items, counts)
            start = 0
            for i, e, n in zip(ready, events, counts.tolist(), strict=True):
                # The inputs are spent: dropping them keeps the event sent on to rank ~10x
                # smaller (200 x 32 floats are most of its bytes).
                out[i] = msgspec.structs.replace(
                    e, scores=scores[start : start + n], user_vec=None, item_vecs=None
                )
                start += n
        return [r for r in out if r is not None]


def _check(e: Event, user_dim: int, item_dim: int) -> str:
    if e.user_vec is None:
        return "event has no user_vec: the features stage must run before score"
    if e.item_vecs is None:
        return "event has no item_vecs: the embed stage must run before score"
    if e.user_vec.shape != (user_dim,):
        return f"user_vec has shape {e.user_vec.shape}, the model expects ({user_dim},)"
    if e.item_vecs.shape != (len(e.candidates), item_dim):
        return (
            f"item_vecs has shape {e.item_vecs.shape}, expected ({len(e.candidates)}, {item_dim})"
        )
    return ""
