"""A Prometheus histogram that takes a whole batch of observations in one call.

prometheus_client's Histogram wants one ``observe`` per value, i.e. a Python loop per event on the
hottest path there is. Here a batch is bucketed with one ``np.searchsorted`` and one
``np.bincount``; the exposition is the same as a native histogram, so dashboards cannot tell.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class _Series:
    def __init__(self, bounds: npt.NDArray[np.float64]) -> None:
        self._bounds = bounds
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: npt.ArrayLike) -> None:
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        # side="left": a value equal to a bound belongs to that bucket (le is inclusive).
        counts = np.bincount(
            np.searchsorted(self._bounds, arr, side="left"), minlength=len(self._counts)
        )
        total = float(arr.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many(np.array([value]))

    def snapshot(self) -> tuple[npt.NDArray[np.int64], float]:
        with self._lock:
            return self._counts.copy(), self._sum


class BatchHistogram(Collector):
    """Drop-in for a labelled prometheus Histogram with an extra ``observe_many``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = np.array(sorted(b for b in buckets if math.isfinite(b)), dtype=np.float64)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Series:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        series = self._series.get(values)
        if series is None:
            with self._lock:
                series = self._series.setdefault(values, _Series(self._bounds))
        return series

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        with self._lock:
            items = list(self._series.items())
        for labels, series in items:
            counts, total = series.snapshot()
            cumulative = np.cumsum(counts)
            buckets = [
                (_fmt(b), float(c)) for b, c in zip(self._bounds, cumulative[:-1], strict=True)
            ]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(list(labels), buckets, total)
            if len(self._bounds) and self._bounds[0] < 0:
                # With a negative bucket add_metric drops _count and _sum; the native Histogram
                # drops only _sum, so add _count back.
                count = Sample(
                    f"{self._name}_count",
                    dict(zip(self._labelnames, labels, strict=True)),
                    float(cumulative[-1]),
                )
                family.samples.append(count)
        yield family


def _fmt(bound: float) -> str:
    # The le label exactly as prometheus_client's Histogram writes it: 1e+06, not 1000000.0.
    le: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return le
