"""ResultCache: reuse per (user, input row, model version), expiry, and exact outputs."""

from __future__ import annotations

import numpy as np

from storage.results import ResultCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tower:
    """Counts the rows it computes; the output is a fixed function of the input."""

    def __init__(self) -> None:
        self.rows = 0
        self.w = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.rows += x.shape[0]
        out: np.ndarray = np.tanh(x @ self.w).astype(np.float32)
        return out


def _inputs(users: np.ndarray, hour: float = 0.0) -> np.ndarray:
    x = np.repeat(users[:, None].astype(np.float32), 6, axis=1) * 0.01
    x[:, -1] = hour
    return x


def test_outputs_are_reused_and_exact() -> None:
    tower, cache = Tower(), ResultCache(1 << 20, dim=3, clock=Clock())
    users = np.array([1, 2, 3, 2], dtype=np.int64)
    first = cache.get_or_compute("v1", users, _inputs(users), tower)
    assert tower.rows == 3  # the repeated user inside one batch is computed once
    again = cache.get_or_compute("v1", users, _inputs(users), tower)
    assert tower.rows == 3
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(again, tower(_inputs(users)), rtol=1e-6)
    assert cache.hit_ratio() == 5 / 8  # 1 repeat in the first batch + 4 in the second


def test_a_new_context_a_new_version_or_the_ttl_recompute() -> None:
    clock, tower = Clock(), Tower()
    cache = ResultCache(1 << 20, dim=3, ttl=10.0, clock=clock)
    users = np.array([5, 6], dtype=np.int64)
    cache.get_or_compute("v1", users, _inputs(users), tower)
    cache.get_or_compute("v1", users, _inputs(users, hour=3.0), tower)  # context changed
    assert tower.rows == 4
    cache.get_or_compute("v2", users, _inputs(users, hour=3.0), tower)  # new model
    assert tower.rows == 6
    clock.now += 11.0
    cache.get_or_compute("v2", users, _inputs(users, hour=3.0), tower)  # expired
    assert tower.rows == 8
    cache.get_or_compute("v2", users, _inputs(users, hour=3.0), tower)
    assert tower.rows == 8


def test_keys_differ_by_user_and_by_input() -> None:
    cache = ResultCache(1 << 16, dim=3)
    users = np.arange(1000, dtype=np.int64)
    x = _inputs(np.zeros(1000, dtype=np.int64))
    keys = cache.keys(users, x)
    assert (keys >= 0).all() and np.unique(keys).shape[0] == 1000
    x2 = x.copy()
    x2[:, 0] += 1e-3
    assert (cache.keys(users, x2) != keys).all()
