"""OffsetTracker: the committable position never passes an unfinished offset, whatever order
outputs are acknowledged in, and forgotten partitions leave nothing behind."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from stages.runtime.offsets import OffsetTicket, OffsetTracker

TOPIC = "t"


class TrackerModel(RuleBasedStateMachine):
    """Random interleavings of consume (track), acknowledge (done), commit (advance) and
    rebalance (forget) over three partitions, checked against a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = OffsetTracker()
        self.tickets: dict[int, list[OffsetTicket]] = {}
        self.next_offset: dict[int, int] = {}
        self.reported: dict[int, int] = {}

    @initialize()
    def start(self) -> None:
        self.next_offset = dict.fromkeys(range(3), 0)

    @rule(partition=st.integers(0, 2), gap=st.integers(1, 4))
    def consume(self, partition: int, gap: int) -> None:
        # Gaps stand for compacted records and transaction markers.
        offset = self.next_offset[partition] + gap - 1
        self.tickets.setdefault(partition, []).append(self.tracker.track(TOPIC, partition, offset))
        self.next_offset[partition] = offset + 1

    @precondition(lambda self: any(not t.finished for ts in self.tickets.values() for t in ts))
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        open_ = [t for ts in self.tickets.values() for t in ts if not t.finished]
        data.draw(st.sampled_from(open_)).done()

    @rule()
    def commit(self) -> None:
        moved = self.tracker.advance()
        for partition, tickets in self.tickets.items():
            key = (TOPIC, partition)
            finished_prefix = []
            for t in tickets:
                if not t.finished:
                    break
                finished_prefix.append(t.offset)
            if finished_prefix and self.reported.get(partition) != finished_prefix[-1] + 1:
                assert moved[key] == finished_prefix[-1] + 1
                self.reported[partition] = finished_prefix[-1] + 1
            else:
                assert key not in moved
        assert set(moved) <= {(TOPIC, p) for p in self.tickets}

    @rule(partition=st.integers(0, 2), restart=st.integers(0, 20))
    def rebalance(self, partition: int, restart: int) -> None:
        """The partition is revoked; if it comes back, reading restarts anywhere (a seek)."""
        self.tracker.forget([(TOPIC, partition)])
        self.tickets.pop(partition, None)
        self.reported.pop(partition, None)
        self.next_offset[partition] = restart
        assert self.tracker.position((TOPIC, partition)) is None
        assert self.tracker.in_flight([(TOPIC, partition)]) == 0

    @invariant()
    def never_past_an_unfinished_offset(self) -> None:
        for partition, tickets in self.tickets.items():
            pos = self.tracker.position((TOPIC, partition))
            if pos is None:
                continue
            unfinished = [t.offset for t in tickets if not t.finished]
            if unfinished:
                assert pos <= min(unfinished)
            assert pos == self.reported[partition]

    @invariant()
    def in_flight_counts_unfinished(self) -> None:
        want = sum(1 for ts in self.tickets.values() for t in ts if not t.finished)
        assert self.tracker.in_flight() == want
        for p, ts in self.tickets.items():
            assert self.tracker.in_flight([(TOPIC, p)]) == sum(1 for t in ts if not t.finished)


TestTrackerModel = TrackerModel.TestCase
TestTrackerModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


@given(st.permutations(list(range(30))), st.integers(1, 5))
def test_out_of_order_completion_commits_only_the_finished_prefix(
    order: list[int], step: int
) -> None:
    tracker = OffsetTracker()
    offsets = [i * step for i in range(30)]  # with gaps when step > 1
    tickets = [tracker.track(TOPIC, 0, o) for o in offsets]
    done: set[int] = set()
    last = None
    for i in order:
        tickets[i].done()
        done.add(i)
        prefix = 0
        while prefix in done:
            prefix += 1
        moved = tracker.advance()
        if prefix and offsets[prefix - 1] + 1 != last:
            assert moved == {(TOPIC, 0): offsets[prefix - 1] + 1}
            last = offsets[prefix - 1] + 1
        else:
            assert moved == {}
        if prefix < len(offsets):
            assert (tracker.position((TOPIC, 0)) or 0) <= offsets[prefix]
    assert tracker.position((TOPIC, 0)) == offsets[-1] + 1
    assert tracker.in_flight() == 0


def test_done_twice_and_after_forget_is_harmless() -> None:
    tracker = OffsetTracker()
    a = tracker.track(TOPIC, 0, 5)
    a.done()
    a.done()
    assert tracker.advance() == {(TOPIC, 0): 6}
    b = tracker.track(TOPIC, 0, 6)
    tracker.forget([(TOPIC, 0)])
    b.done()  # a delivery report arriving after the partition was revoked
    assert tracker.advance() == {}
    assert tracker.position((TOPIC, 0)) is None


def test_offsets_must_increase_within_a_partition() -> None:
    tracker = OffsetTracker()
    tracker.track(TOPIC, 0, 10)
    tracker.track(TOPIC, 1, 3)  # other partitions are independent
    with pytest.raises(ValueError, match=r"t\[0\]@10"):
        tracker.track(TOPIC, 0, 10)
