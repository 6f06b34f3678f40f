"""The rules jizhi's allocator is measured against, as pure functions the simulator drives.

`keda_step` is KEDA's Kafka scaler feeding the Kubernetes HPA, as documented and implemented
upstream: per-partition lag = end offset - committed offset (never negative); the total is capped
at ``partitions x lag_threshold`` unless idle consumers are allowed; the HPA's desired replicas for
an ``AverageValue`` target are ``ceil(total lag / lag_threshold)``, ignored within a 10%
tolerance, scale-up limited to ``max(4 pods, +100%)`` per 15 s, scale-down to the highest
recommendation of the last 300 s; replicas never exceed the partitions (KEDA's own cap).

`static_peak` is what most deployments do: enough consumers for the peak, all day.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class KedaOptions:
    lag_threshold: float = 10.0
    allow_idle_consumers: bool = False
    min_replicas: int = 1
    max_replicas: int = 1 << 20
    tolerance: float = 0.1
    stabilization_s: float = 300.0
    up_period_s: float = 15.0
    up_pods: int = 4
    up_percent: float = 100.0


@dataclass(frozen=True, slots=True)
class KedaState:
    replicas: int
    recent: tuple[tuple[float, int], ...] = ()
    last_up: float = -math.inf


def keda_total_lag(
    lags: Sequence[float] | npt.NDArray[np.float64], partitions: int, opts: KedaOptions
) -> float:
    """The metric KEDA reports: summed non-negative lag, capped unless idle consumers allowed."""
    total = float(np.maximum(np.asarray(lags, dtype=np.float64), 0.0).sum())
    if not opts.allow_idle_consumers:
        total = min(total, partitions * opts.lag_threshold)
    return total


def keda_step(
    state: KedaState, total_lag: float, partitions: int, now: float, opts: KedaOptions
) -> KedaState:
    """One HPA sync: the replicas after this look."""
    current = max(state.replicas, 0)
    raw = math.ceil(total_lag / opts.lag_threshold - 1e-9)
    if current > 0:
        ratio = total_lag / (current * opts.lag_threshold)
        if abs(ratio - 1.0) <= opts.tolerance:
            raw = current
    cap = min(partitions, opts.max_replicas) if not opts.allow_idle_consumers else opts.max_replicas
    rec = max(opts.min_replicas, min(raw, cap))
    window = tuple((t, r) for t, r in state.recent if now - t < opts.stabilization_s)
    window = (*window, (now, rec))
    if rec > current:
        if now - state.last_up < opts.up_period_s:
            return replace(state, recent=window)
        limit = max(current + opts.up_pods, math.ceil(current * (1 + opts.up_percent / 100)))
        return KedaState(min(rec, limit), window, now)
    stable = max(r for _, r in window)
    return KedaState(min(current, stable), window, state.last_up)


def static_peak(peak_rate: float, service_rate: float, utilisation: float, partitions: int) -> int:
    """Consumers for the peak at the given utilisation, capped at partitions."""
    return max(1, min(partitions, math.ceil(peak_rate / (service_rate * utilisation) - 1e-9)))
