"""A failed look must not leave the allocator with the client that failed: after a broker that
held a group's coordinator was killed and restarted, that client's offset reads timed out for
minutes while a new one answered at once (found by tests/integration/test_chaos.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from allocator import observe_kafka
from allocator.errors import ObserveError
from allocator.observe_kafka import KafkaObserver
from stages.runtime.kafka import TransportError


class _Admin:
    """The first client made is stuck on the old coordinator; later ones answer."""

    made: ClassVar[list[_Admin]] = []

    def __init__(self, conf: Mapping[str, Any], *, timeout: float) -> None:
        self.stuck = not _Admin.made
        self.closed = False
        _Admin.made.append(self)

    def partition_counts(self) -> dict[str, int]:
        return {"jizhi.p.embed": 2}

    def end_offsets(self, topic: str, partitions: int) -> list[int]:
        return [10] * partitions

    def committed_offsets(self, group: str, topic: str, partitions: int) -> list[int]:
        if self.stuck:
            raise TransportError(f"cannot read offsets of group {group}", retriable=True)
        return [7] * partitions

    def close(self) -> None:
        self.closed = True


def test_a_failed_look_takes_a_new_client(monkeypatch: pytest.MonkeyPatch) -> None:
    _Admin.made = []
    monkeypatch.setattr(observe_kafka, "KafkaAdmin", _Admin)
    observer = KafkaObserver({}, {"embed": ("jizhi.p.embed", "jizhi.p.embed")})
    with pytest.raises(ObserveError):
        observer.offsets()
    [seen] = observer.offsets()
    assert seen.committed == (7, 7)
    assert [a.closed for a in _Admin.made] == [True, False]
