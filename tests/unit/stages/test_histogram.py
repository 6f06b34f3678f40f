"""BatchHistogram must be indistinguishable from prometheus_client's Histogram on the wire."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stages.histogram import BatchHistogram

Sample = tuple[str, tuple[tuple[str, str], ...], float]
LABELS = ("pipeline", "stage")
LABEL_SETS = [("demo", "ingest"), ("demo", "rank"), ("other", "ingest")]


def samples(registry: CollectorRegistry) -> list[Sample]:
    """Every exposed sample except ``_created`` (a timestamp only the native one has)."""
    return [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    ]


def split(got: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(buckets and counts, sums): the first must match exactly, sums up to rounding."""
    exact = [s for s in got if not s[0].endswith("_sum")]
    sums = [s for s in got if s[0].endswith("_sum")]
    return exact, sums


def pair(
    buckets: Sequence[float], labelnames: Sequence[str] = LABELS
) -> tuple[CollectorRegistry, BatchHistogram, CollectorRegistry, Histogram]:
    ours_reg, native_reg = CollectorRegistry(), CollectorRegistry()
    ours = BatchHistogram("h_seconds", "doc", labelnames, buckets=buckets, registry=ours_reg)
    native = Histogram("h_seconds", "doc", labelnames, buckets=buckets, registry=native_reg)
    return ours_reg, ours, native_reg, native


def assert_same_exposition(
    ours_reg: CollectorRegistry, native_reg: CollectorRegistry, sum_tol: float = 0.0
) -> None:
    ours, native = samples(ours_reg), samples(native_reg)
    ours_exact, ours_sums = split(ours)
    native_exact, native_sums = split(native)
    assert ours_exact == native_exact  # names, le strings, label order, counts: all identical
    assert [s[:2] for s in ours_sums] == [s[:2] for s in native_sums]
    for (_, _, a), (_, _, b) in zip(ours_sums, native_sums, strict=True):
        if sum_tol == 0.0:
            assert a == b or (math.isnan(a) and math.isnan(b))
        else:
            assert math.isclose(a, b, rel_tol=1e-12, abs_tol=sum_tol)


# --- strategies ------------------------------------------------------------------------------

bounds_strategy = st.lists(
    st.one_of(
        st.floats(-1e12, 1e12, allow_nan=False),
        st.sampled_from([0.0, 0.005, 1e-7, 1.0, 2.5, 1e6, 1e7, 123456789.5, 5e11]),
    ),
    min_size=1,
    max_size=12,
    unique=True,
).map(sorted)


@st.composite
def bounds_and_values(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    bounds = draw(bounds_strategy)
    on_bound = st.sampled_from(bounds)
    near_bound = on_bound.flatmap(
        lambda b: st.sampled_from([math.nextafter(b, -math.inf), math.nextafter(b, math.inf)])
    )
    value = st.one_of(
        on_bound,  # le is inclusive: exactly on a bound belongs to that bucket
        near_bound,
        st.floats(-1e300, 1e300, allow_nan=False),
        st.floats(-10.0, 10.0),
        st.integers(-(10**6), 10**6).map(float),
    )
    return bounds, draw(st.lists(value, max_size=120))


# --- equivalence with the native histogram ---------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(case=bounds_and_values(), data=st.data())
def test_same_samples_as_native_histogram(
    case: tuple[list[float], list[float]], data: st.DataObject
) -> None:
    bounds, values = case
    ours_reg, ours, native_reg, native = pair(bounds)
    for labels in LABEL_SETS:  # create series in the same order on both sides
        ours.labels(*labels)
        native.labels(*labels)
    # Each value goes to a random label set, in random-sized batches.
    which = data.draw(st.lists(st.integers(0, 2), min_size=len(values), max_size=len(values)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=5)))
    for start, end in zip([0, *cuts], [*cuts, len(values)], strict=True):
        for li in range(3):
            batch = [v for v, w in zip(values[start:end], which[start:end], strict=True) if w == li]
            ours.labels(*LABEL_SETS[li]).observe_many(np.array(batch, dtype=np.float64))
            for v in batch:
                native.labels(*LABEL_SETS[li]).observe(v)
    # Sums may be added in a different order (per batch, pairwise); counts may not differ at all.
    tol = 1e-12 * sum(abs(v) for v in values) + 1e-300
    assert_same_exposition(ours_reg, native_reg, sum_tol=tol)


@settings(max_examples=60, deadline=None)
@given(
    bounds=bounds_strategy,
    values=st.lists(st.integers(-(2**40), 2**40).map(float), max_size=100),
)
def test_sums_are_exact_when_float_addition_is(bounds: list[float], values: list[float]) -> None:
    ours_reg, ours, native_reg, native = pair(bounds, labelnames=())
    ours.labels().observe_many(values)
    for v in values:
        native.observe(v)
    assert_same_exposition(ours_reg, native_reg)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf + -inf
def test_values_on_bounds_and_infinities() -> None:
    bounds = [0.1, 1.0, 10.0]
    values = [0.1, 1.0, 10.0, math.nextafter(0.1, 1), -math.inf, math.inf, -5.0, 1e308]
    ours_reg, ours, native_reg, native = pair(bounds, labelnames=())
    ours.labels().observe_many(values)
    for v in values:
        native.observe(v)
    assert_same_exposition(ours_reg, native_reg)
    got = {dict(s[1]).get("le"): s[2] for s in samples(ours_reg) if s[0] == "h_seconds_bucket"}
    assert got == {"0.1": 3.0, "1.0": 5.0, "10.0": 6.0, "+Inf": 8.0}


def test_negative_bounds_keep_count_and_drop_sum_like_native() -> None:
    bounds = [-5.0, 0.0, 5.0]
    ours_reg, ours, native_reg, native = pair(bounds, labelnames=("a",))
    values = [-7.0, -5.0, 0.0, 3.0, 8.0]
    ours.labels("x").observe_many(values)
    for v in values:
        native.labels("x").observe(v)
    assert_same_exposition(ours_reg, native_reg)
    names = [s[0] for s in samples(ours_reg)]
    assert names.count("h_seconds_count") == 1
    assert "h_seconds_sum" not in names
    assert ("h_seconds_count", (("a", "x"),), 5.0) in samples(ours_reg)


def test_le_labels_are_go_formatted_like_native() -> None:
    bounds = [1e-7, 0.005, 1.0, 1e6, 1e7, 123456789.5]
    ours_reg, ours, native_reg, native = pair(bounds, labelnames=())
    ours.labels().observe(3.0)
    native.observe(3.0)
    for reg in (ours_reg, native_reg):
        les = [dict(s[1])["le"] for s in samples(reg) if s[0] == "h_seconds_bucket"]
        assert les == ["1e-07", "0.005", "1.0", "1e+06", "1e+07", "1.234567895e+08", "+Inf"]


def test_text_exposition_matches_native() -> None:
    buckets = Histogram.DEFAULT_BUCKETS  # ends with +Inf, which both must accept
    ours_reg, ours, native_reg, native = pair(buckets)
    values = [0.001, 0.005, 0.25, 0.3, 7.5, 10.0, 11.0, 0.0]
    ours.labels("demo", "score").observe_many(values)
    for v in values:
        native.labels("demo", "score").observe(v)

    def text(reg: CollectorRegistry) -> list[str]:
        return [
            line for line in generate_latest(reg).decode().splitlines() if "_created" not in line
        ]

    assert text(ours_reg) == text(native_reg)


def test_unsorted_buckets_are_sorted() -> None:
    reg = CollectorRegistry()
    h = BatchHistogram("u", "doc", (), buckets=[5.0, 1.0, math.inf, 2.0], registry=reg)
    h.labels().observe_many([1.5, 3.0, 9.0])
    got = [(dict(s[1])["le"], s[2]) for s in samples(reg) if s[0] == "u_bucket"]
    assert got == [("1.0", 0.0), ("2.0", 1.0), ("5.0", 2.0), ("+Inf", 3.0)]


def test_empty_batch_is_a_no_op_and_series_is_exposed_at_zero() -> None:
    reg = CollectorRegistry()
    h = BatchHistogram("e", "doc", ("a",), buckets=[1.0], registry=reg)
    h.labels("x").observe_many(np.array([]))
    h.labels("x").observe_many([])
    assert samples(reg) == [
        ("e_bucket", (("a", "x"), ("le", "1.0")), 0.0),
        ("e_bucket", (("a", "x"), ("le", "+Inf")), 0.0),
        ("e_count", (("a", "x"),), 0.0),
        ("e_sum", (("a", "x"),), 0.0),
    ]


def test_observe_many_accepts_any_shape() -> None:
    reg = CollectorRegistry()
    h = BatchHistogram("s", "doc", (), buckets=[1.0], registry=reg)
    h.labels().observe_many(np.array([[0.5, 2.0], [1.0, 3.0]], dtype=np.float32))
    got = {s[0] + str(dict(s[1]).get("le", "")): s[2] for s in samples(reg)}
    assert got == {"s_bucket1.0": 2.0, "s_bucket+Inf": 4.0, "s_count": 4.0, "s_sum": 6.5}


def test_no_label_sets_means_no_samples() -> None:
    reg = CollectorRegistry()
    BatchHistogram("n", "doc", LABELS, buckets=[1.0], registry=reg)
    assert samples(reg) == []
    family = next(iter(reg.collect()))
    assert (family.name, family.type, family.documentation) == ("n", "histogram", "doc")


def test_describe_blocks_duplicate_registration() -> None:
    reg = CollectorRegistry()
    BatchHistogram("dup_seconds", "doc", (), buckets=[1.0], registry=reg)
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("dup_seconds", "doc", registry=reg)


def test_registry_none_does_not_register() -> None:
    h = BatchHistogram("free", "doc", (), buckets=[1.0], registry=None)
    h.labels().observe(2.0)
    family = next(iter(h.collect()))
    assert [s.value for s in family.samples if s.name == "free_count"] == [1.0]


def test_labels_returns_the_same_series() -> None:
    h = BatchHistogram("same", "doc", LABELS, buckets=[1.0], registry=None)
    assert h.labels("a", "b") is h.labels("a", "b")
    assert h.labels("a", "b") is not h.labels("b", "a")


@pytest.mark.parametrize("values", [(), ("a",), ("a", "b", "c")])
def test_wrong_label_arity_raises(values: tuple[str, ...]) -> None:
    h = BatchHistogram("arity", "doc", LABELS, buckets=[1.0], registry=None)
    with pytest.raises(ValueError, match="takes labels"):
        h.labels(*values)
    assert list(next(iter(h.collect())).samples) == []  # nothing half-created


def test_unlabelled_histogram_rejects_labels() -> None:
    h = BatchHistogram("none", "doc", (), buckets=[1.0], registry=None)
    with pytest.raises(ValueError):
        h.labels("x")


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_observe_many_adds_up() -> None:
    threads_n, batches, size = 8, 60, 250
    bounds = [10.0, 100.0, 500.0]
    reg = CollectorRegistry()
    h = BatchHistogram("conc", "doc", ("t",), buckets=bounds, registry=reg)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(threads_n, batches, size)).astype(np.float64)
    start = threading.Barrier(threads_n)

    def work(i: int) -> None:
        start.wait()
        for b in range(batches):
            # Half the threads share one series, creating it concurrently; the rest have their own.
            h.labels("shared" if i % 2 == 0 else f"own{i}").observe_many(data[i, b])
            if b % 10 == 0:
                list(reg.collect())  # scrapes racing with writes

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    got = {(s[0], s[1]): s[2] for s in samples(reg)}
    shared = data[0::2].ravel()
    assert got[("conc_count", (("t", "shared"),))] == shared.size
    assert got[("conc_sum", (("t", "shared"),))] == shared.sum()  # integers: exact in any order
    for le, bound in zip(["10.0", "100.0", "500.0"], bounds, strict=True):
        key = ("conc_bucket", (("le", le), ("t", "shared")))
        assert got[key] == np.count_nonzero(shared <= bound)
    total = sum(v for (name, _), v in got.items() if name == "conc_count")
    assert total == threads_n * batches * size
