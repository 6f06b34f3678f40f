"""Which input offsets may be committed: only those whose every earlier offset is finished too.

Kafka commits a position, not a set, so with outputs acknowledged out of order (different topics,
different batches) the committable position of a partition is just past the last offset of its
finished prefix. Only the consumer's thread calls the tracker; other threads (a producer's delivery
reports) only flip a ticket's flag, which is a single atomic store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

TopicPartitionKey = tuple[str, int]


class OffsetTicket:
    """Marks one consumed message finished; ``done`` may be called from any thread, and more than
    once."""

    __slots__ = ("finished", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.finished = False

    def done(self) -> None:
        self.finished = True


class OffsetTracker:
    """Per partition, the tickets in consumption order and the last position reported.

    Offsets of one partition must be tracked in increasing order (as a consumer reads them); gaps
    are fine (compacted records, transaction markers). A position is "the next offset to read",
    as Kafka commits it.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartitionKey, deque[OffsetTicket]] = {}
        self._position: dict[TopicPartitionKey, int] = {}

    def track(self, topic: str, partition: int, offset: int) -> OffsetTicket:
        ticket = OffsetTicket(offset)
        queue = self._pending.setdefault((topic, partition), deque())
        if queue and queue[-1].offset >= offset:
            raise ValueError(
                f"{topic}[{partition}]@{offset} tracked after @{queue[-1].offset}: offsets of a "
                "partition must be tracked in increasing order (forget the partition after a seek)"
            )
        queue.append(ticket)
        return ticket

    def advance(self) -> dict[TopicPartitionKey, int]:
        """Newly committable positions since the last call (only the partitions that moved)."""
        moved: dict[TopicPartitionKey, int] = {}
        for key, queue in self._pending.items():
            last = None
            while queue and queue[0].finished:
                last = queue.popleft().offset
            if last is not None:
                self._position[key] = last + 1
                moved[key] = last + 1
        return moved

    def in_flight(self, keys: Iterable[TopicPartitionKey] | None = None) -> int:
        """Messages consumed but not yet finished, for the given partitions (default all)."""
        chosen = list(self._pending) if keys is None else keys
        return sum(sum(1 for t in self._pending.get(k, ()) if not t.finished) for k in chosen)

    def position(self, key: TopicPartitionKey) -> int | None:
        """The last committable position reported by `advance` (None if none yet)."""
        return self._position.get(key)

    def partitions(self) -> list[TopicPartitionKey]:
        return list(self._pending.keys() | self._position.keys())

    def forget(self, keys: Iterable[TopicPartitionKey]) -> None:
        """Drop partitions this consumer no longer owns; their unfinished tickets are abandoned
        (finishing them later changes nothing; the next owner re-reads from the last committed
        position)."""
        for key in keys:
            self._pending.pop(key, None)
            self._position.pop(key, None)
