"""The control topic's records and the partition hand-over rule (no broker)."""

from __future__ import annotations

import itertools
import json

import pytest

from stages.runtime.control import (
    AdmissionLimit,
    AssignmentPlan,
    Claim,
    ControlState,
    decode,
    encode,
    handover,
)

PLAN = AssignmentPlan("ingest", 7, {"a": [0, 1], "b": [2, 3], "c": [4, 5]})


@pytest.mark.parametrize(
    ("record", "key"),
    [
        (AdmissionLimit(12.5), b"admission"),
        (PLAN, b"assignment/ingest"),
        (Claim("ingest", "a", 7, [0, 1]), b"claim/ingest/a"),
    ],
)
def test_records_round_trip_with_their_keys(record: object, key: bytes) -> None:
    k, v = encode(record)  # type: ignore[arg-type]
    assert k == key
    assert decode(v) == record
    raw = json.loads(v)
    assert raw["v"] == 1 and raw["kind"] in ("admission", "assignment", "claim")
    assert len(v) < 120  # small: one line a human can read with kcat


def test_a_record_kafka_clients_write_by_hand_decodes() -> None:
    assert decode(b'{"kind":"admission","rate":40}') == AdmissionLimit(40.0)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'{"rate": 3}',  # no kind
        b'{"kind":"teleport","rate":3}',
        b'{"kind":"admission","rate":"fast"}',
        b'{"kind":"admission","rate":3,"v":2}',  # a newer writer: skipped, not misread
    ],
)
def test_records_a_reader_cannot_use_are_skipped(value: bytes) -> None:
    assert decode(value) is None


def test_unknown_fields_of_a_known_version_are_ignored() -> None:
    assert decode(b'{"kind":"admission","rate":3,"why":"latency_high"}') == AdmissionLimit(3.0)


def test_state_keeps_the_latest_of_each_key_and_honours_tombstones() -> None:
    s = ControlState()
    for rec in (AdmissionLimit(5.0), PLAN, Claim("ingest", "a", 7, [0, 1])):
        s.apply(*encode(rec))
    assert s.admission == 5.0 and s.plans["ingest"] == PLAN and set(s.claims["ingest"]) == {"a"}
    older = AssignmentPlan("ingest", 6, {"a": list(range(6))})
    assert s.apply(*encode(older)) is None and s.plans["ingest"] == PLAN


def test_tombstones_delete_their_keys() -> None:
    s = ControlState()
    for rec in (AdmissionLimit(5.0), PLAN, Claim("ingest", "a", 7, [0, 1])):
        s.apply(*encode(rec))
    s.apply(b"claim/ingest/a", None)
    s.apply(b"admission", None)
    s.apply(b"assignment/ingest", None)
    assert s.admission is None and s.plans == {} and s.claims["ingest"] == {}
    assert s.apply(b"admission", b"garbage") is None
    assert s.plans == {}


def _claim(who: str, gen: int, owns: list[int]) -> Claim:
    return Claim("ingest", who, gen, owns)


def test_release_comes_first_and_nothing_is_taken_before_the_claim_is_read_back() -> None:
    step = handover("a", PLAN, {0, 2}, {}, my_claim=None, group_empty=True)
    assert step.release == {2} and step.take == set() and step.waiting == {1}
    step = handover("a", PLAN, {0}, {}, my_claim=_claim("a", 6, [0, 2]), group_empty=True)
    assert step.take == set()  # my claim of the previous generation does not cover this one


def test_takes_only_partitions_no_other_claim_names() -> None:
    claims = {"a": _claim("a", 7, [0, 1]), "b": _claim("b", 6, [1, 2, 3])}
    step = handover("a", PLAN, {0}, claims, my_claim=claims["a"], group_empty=True)
    assert step.take == set() and step.waiting == {1}
    claims["b"] = _claim("b", 7, [2, 3])  # b released 1 and said so
    step = handover("a", PLAN, {0}, claims, my_claim=claims["a"], group_empty=True)
    assert step.take == {1} and step.waiting == set() and step.release == set()


def test_a_group_managed_member_blocks_every_take() -> None:
    mine = _claim("a", 7, [0, 1])
    step = handover("a", PLAN, set(), {"a": mine}, my_claim=mine, group_empty=False)
    assert step.take == set() and step.waiting == {0, 1}


def test_an_instance_the_plan_does_not_name_releases_everything() -> None:
    step = handover("z", PLAN, {4, 5}, {}, my_claim=None, group_empty=True)
    assert step.release == {4, 5} and step.take == step.waiting == set()


def test_no_partition_is_ever_held_twice_whatever_the_interleaving() -> None:
    """Three workers move from plan 1 to plan 2 in every order of their single steps; a claim
    is visible to all at once (the log is read past it before anyone relies on it)."""
    p1 = AssignmentPlan("s", 1, {"a": [0, 1, 2, 3], "b": [4, 5], "c": []})
    p2 = AssignmentPlan("s", 2, {"a": [0], "b": [1, 4], "c": [2, 3, 5]})
    start_held = {k: set(v) for k, v in p1.owners.items()}
    start_claims = {k: _claim(k, 1, v) for k, v in p1.owners.items()}
    names = ["a", "b", "c"]
    for order in itertools.product(names, repeat=6):
        held = {k: set(v) for k, v in start_held.items()}
        claims = dict(start_claims)
        for who in (*order, *names * 3):  # then everyone until settled
            step = handover(who, p2, held[who], claims, my_claim=claims[who], group_empty=True)
            if step.release:
                held[who] -= step.release
            if step.release or claims[who].generation < 2:
                claims[who] = _claim(who, 2, sorted(p2.share(who)))
                continue  # a real worker re-reads before it takes
            held[who] |= step.take
            everyone = [p for h in held.values() for p in h]
            assert len(everyone) == len(set(everyone)), (order, held)
        assert {k: sorted(v) for k, v in held.items()} == p2.owners, order
