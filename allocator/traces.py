"""Traffic traces for the simulator: diurnal waves, flash spikes, skewed keys.

A trace is the offered request rate per time step, the same time of day on a recorded previous
day (what a history-based forecast may read: the waves, never the spikes), and the share of
traffic of each key group. Keys are users hashed into ``KEY_GROUPS`` groups; a group lands on
partition ``group % partitions``, which is how ``murmur2(key) % n`` spreads keys, so growing a
topic by doubling splits each partition's groups over two partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

KEY_GROUPS = 1 << 15
DAY_S = 86_400.0

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    description: str
    dt: float
    """Seconds per step."""
    rate: FloatArray
    """Offered requests/s per step."""
    history: FloatArray
    """The rate at the same time of a previous day, per step, smoothed over 5 minutes (no
    spikes: they are news): what a contender may record as yesterday."""
    key_weights: FloatArray
    """Share of traffic per key group; sums to 1."""
    start_s: float = 0.0
    """Time of day of the first step, seconds after midnight."""

    @property
    def steps(self) -> int:
        return len(self.rate)

    @property
    def hours(self) -> float:
        return self.steps * self.dt / 3600.0


def _shape(t: FloatArray) -> FloatArray:
    day = 2 * np.pi * (t / DAY_S)
    main = 0.5 - 0.5 * np.cos(day - 2 * np.pi * (20 - 12) / 24 + np.pi)
    shoulder = 0.15 * np.exp(-(((t / 3600.0) % 24 - 9.5) ** 2) / 2.0)
    return main + shoulder


def _wave(t: FloatArray, trough: float) -> FloatArray:
    """A day: low at night, a morning shoulder, the peak at 20:00 (shares of the day's peak,
    normalised over the whole day whatever part of it ``t`` covers)."""
    full = _shape(np.arange(0.0, DAY_S, 60.0))
    lo, hi = float(full.min()), float(full.max())
    return trough + (1 - trough) * (_shape(t) - lo) / (hi - lo)


def _noise(rng: np.random.Generator, n: int, dt: float, sigma: float) -> FloatArray:
    """Multiplicative noise, correlated over about a minute (traffic does not jump per step)."""
    rho = float(np.exp(-dt / 60.0))
    eps = rng.standard_normal(n) * sigma * np.sqrt(1 - rho**2)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):  # a short AR(1) loop, once per trace
        acc = rho * acc + eps[i]
        out[i] = acc
    return np.exp(out - sigma**2 / 2)


def _smooth(x: FloatArray, dt: float, window_s: float = 300.0) -> FloatArray:
    """History as an allocator keeps it: a 5-minute moving average of what was recorded."""
    n = max(1, int(window_s / dt))
    padded = np.pad(x, (n // 2, n - 1 - n // 2), mode="edge")
    return np.convolve(padded, np.ones(n) / n, mode="valid")


def uniform_keys(rng: np.random.Generator) -> FloatArray:
    """Many users per group: groups differ only by sampling noise."""
    w = rng.gamma(400.0, size=KEY_GROUPS)
    out: FloatArray = w / w.sum()
    return out


def skewed_keys(rng: np.random.Generator, *, sigma: float = 1.3) -> FloatArray:
    """Heavy users make their groups hot: log-normal group weights, the hottest group ~100x
    the mean. At 512 partitions the hottest partition carries ~2.6x the mean (at 4096, ~13x),
    so with a few partitions per consumer, where the hot ones land decides the busiest consumer.
    (A single partition beyond one consumer's rate would need its key split, not an allocator.)
    """
    w = rng.lognormal(0.0, sigma, size=KEY_GROUPS)
    out: FloatArray = w / w.sum()
    return out


def diurnal(
    *,
    peak: float,
    hours: float = 24.0,
    dt: float = 10.0,
    trough: float = 0.3,
    noise: float = 0.04,
    skew: bool = False,
    seed: int = 1,
    start_h: float = 0.0,
    name: str = "diurnal",
) -> Trace:
    rng = np.random.default_rng(seed)
    t = start_h * 3600.0 + np.arange(0.0, hours * 3600.0, dt)
    base = _wave(t, trough) * peak
    rate = base * _noise(rng, len(t), dt, noise)
    history = _smooth(base * _noise(rng, len(t), dt, noise) * rng.uniform(0.95, 1.05), dt)
    keys = skewed_keys(rng) if skew else uniform_keys(rng)
    what = "skewed keys (log-normal groups)" if skew else "uniform keys"
    return Trace(
        name,
        f"{hours:g} h from {start_h:02g}:00 of a day, trough {trough:.0%} of a {peak:.0e} req/s "
        f"peak, {noise:.0%} noise, {what}",
        dt,
        rate,
        history,
        keys,
        start_h * 3600.0,
    )


def flash(
    *,
    peak: float,
    hours: float = 24.0,
    dt: float = 10.0,
    spikes: int = 6,
    height: float = 2.0,
    ramp_s: float = 90.0,
    hold_s: float = 300.0,
    seed: int = 2,
    skew: bool = False,
    name: str = "flash",
) -> Trace:
    """A diurnal day plus flash spikes (a push notification, a live event): each ramps to
    ``height`` times the current rate in ``ramp_s``, holds ``hold_s`` and decays as fast;
    spikes are not in the history, so no forecast sees them coming."""
    tr = diurnal(peak=peak / height, hours=hours, dt=dt, seed=seed, skew=skew, name=name)
    rng = np.random.default_rng(seed + 100)
    t = np.arange(tr.steps) * dt
    mult = np.ones(tr.steps)
    starts = np.sort(rng.uniform(0.1, 0.9, size=spikes)) * t[-1]
    for s in starts:
        up = np.clip((t - s) / ramp_s, 0.0, 1.0)
        down = np.clip(1.0 - (t - s - ramp_s - hold_s) / ramp_s, 0.0, 1.0)
        mult = np.maximum(mult, 1.0 + (height - 1.0) * np.minimum(up, down))
    desc = (
        f"{tr.description}; {spikes} spikes to {height:g}x (ramp {ramp_s:g} s, hold {hold_s:g} s)"
    )
    return Trace(name, desc, dt, tr.rate * mult, tr.history, tr.key_weights, tr.start_s)
