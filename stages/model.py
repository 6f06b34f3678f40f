"""The built-in ranking model: two towers and a small MLP head, in plain numpy.

    u = tanh([user embedding ‖ context features] · Wu + bu)        one row per request
    v = tanh(item embedding · Wi + bi)                             one row per candidate
    s = sigmoid(relu([u⊙v ‖ u ‖ v] · W1 + b1) · w2 + b2)           one score per candidate

The head's ``u · W1[u-block]`` term is the same for every candidate of a request, so it is computed
once per request and repeated, instead of once per candidate. Weights live in an ``.npz`` file with
a JSON ``meta`` entry (version and widths), so a model is one file a user can swap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from stages.errors import ModelError

F32 = npt.NDArray[np.float32]

_WEIGHTS: Final = ("wu", "bu", "wi", "bi", "w1", "b1", "w2", "b2")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Widths that must agree with the embedding tables and the features stage."""

    user_dim: int
    context_dim: int
    item_dim: int
    tower_dim: int = 32
    hidden_dim: int = 64


class RankingModel:
    """Scores candidates for many requests in one vectorized pass."""

    def __init__(self, shape: ModelShape, weights: dict[str, F32], version: str) -> None:
        expected = _expected_shapes(shape)
        for name, want in expected.items():
            got = weights.get(name)
            if got is None:
                raise ModelError(f"model {version!r} has no weight {name!r}")
            if got.shape != want:
                raise ModelError(
                    f"model {version!r}: weight {name!r} has shape {got.shape}, expected {want}"
                )
        self.shape = shape
        self.version = version
        w = {k: np.ascontiguousarray(weights[k], dtype=np.float32) for k in _WEIGHTS}
        t = shape.tower_dim
        self._wu, self._bu = w["wu"], w["bu"]
        self._wi, self._bi = w["wi"], w["bi"]
        self._w1_uv, self._w1_u, self._w1_v = w["w1"][:t], w["w1"][t : 2 * t], w["w1"][2 * t :]
        self._b1, self._w2, self._b2 = w["b1"], w["w2"], float(w["b2"][0])
        self._weights = w

    @property
    def user_input_dim(self) -> int:
        return self.shape.user_dim + self.shape.context_dim

    def user_tower(self, user_inputs: F32) -> F32:
        """Per-request tower output; cacheable per user and model version."""
        out: F32 = np.tanh(user_inputs @ self._wu + self._bu)
        return out

    def score(self, user_inputs: F32, item_vecs: F32, counts: npt.NDArray[np.int64]) -> F32:
        """Scores for ``counts[r]`` consecutive candidates of request ``r``, flattened.

        ``user_inputs`` is (requests, user_dim + context_dim); ``item_vecs`` is
        (sum(counts), item_dim).
        """
        return self.score_towers(self.user_tower(user_inputs), item_vecs, counts)

    def score_towers(self, u: F32, item_vecs: F32, counts: npt.NDArray[np.int64]) -> F32:
        """Like `score` but from precomputed user-tower outputs."""
        v = np.tanh(item_vecs @ self._wi + self._bi)
        rows = np.repeat(np.arange(len(u)), counts)
        per_user = u @ self._w1_u + self._b1
        h = (u[rows] * v) @ self._w1_uv
        h += v @ self._w1_v
        h += per_user[rows]
        np.maximum(h, 0.0, out=h)
        logits = h @ self._w2 + self._b2
        out: F32 = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32, copy=False)
        return out

    def weights(self) -> dict[str, F32]:
        return dict(self._weights)

    def save(self, path: Path) -> None:
        meta = json.dumps(
            {
                "version": self.version,
                "user_dim": self.shape.user_dim,
                "context_dim": self.shape.context_dim,
                "item_dim": self.shape.item_dim,
                "tower_dim": self.shape.tower_dim,
                "hidden_dim": self.shape.hidden_dim,
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays: dict[str, npt.NDArray[Any]] = {"meta": np.array(meta), **self._weights}
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RankingModel:
        if not path.exists():
            raise ModelError(f"model file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                weights = {k: np.asarray(data[k], dtype=np.float32) for k in _WEIGHTS if k in data}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"model file {path} is not a jizhi model: {exc}") from exc
        try:
            shape = ModelShape(
                user_dim=int(meta["user_dim"]),
                context_dim=int(meta["context_dim"]),
                item_dim=int(meta["item_dim"]),
                tower_dim=int(meta["tower_dim"]),
                hidden_dim=int(meta["hidden_dim"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model file {path}: meta lacks a width ({exc})") from exc
        return cls(shape, weights, version=str(meta.get("version", path.stem)))

    @classmethod
    def synthetic(cls, shape: ModelShape, seed: int, version: str | None = None) -> RankingModel:
        """Random but well-scaled weights, so scores spread over (0, 1) instead of saturating."""
        rng = np.random.default_rng(seed)
        weights: dict[str, F32] = {}
        for name, dims in _expected_shapes(shape).items():
            fan_in = dims[0] if len(dims) == 2 else 1
            scale = 1.0 / np.sqrt(fan_in) if name.startswith("w") else 0.1
            weights[name] = (rng.standard_normal(dims) * scale).astype(np.float32)
        return cls(shape, weights, version=version or f"synthetic-{seed}")


def _expected_shapes(s: ModelShape) -> dict[str, tuple[int, ...]]:
    t, h = s.tower_dim, s.hidden_dim
    return {
        "wu": (s.user_dim + s.context_dim, t),
        "bu": (t,),
        "wi": (s.item_dim, t),
        "bi": (t,),
        "w1": (3 * t, h),
        "b1": (h,),
        "w2": (h,),
        "b2": (1,),
    }
