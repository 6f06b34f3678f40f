"""A consumer whose error is fatal must stop its worker: librdkafka reports a fenced static
member as code _FATAL with ``fatal()`` false, and a worker that took it for a warning lived on
with no partitions while its stage answered nothing (found by tests/integration/test_chaos.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError

from stages.runtime.kafka.errors import TransportError, consumer_fatal
from stages.runtime.kafka.source import KafkaSource
from stages.runtime.kafka.transactional import TransactionalChain

FENCED = KafkaError(
    KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer"
)


class _FakeMessage:
    def __init__(self, err: KafkaError) -> None:
        self._err = err

    def error(self) -> KafkaError:
        return self._err

    def partition(self) -> int:
        return 0


def _message(err: KafkaError) -> Any:
    """What a consumer returns for an error instead of a record."""
    return _FakeMessage(err)


def test_a_fatal_code_is_fatal_though_the_flag_says_otherwise() -> None:
    assert FENCED.fatal() is False  # what the client hands over
    assert consumer_fatal(FENCED)
    assert not consumer_fatal(KafkaError(KafkaError._PARTITION_EOF))
    assert not consumer_fatal(KafkaError(KafkaError._TRANSPORT))


def test_the_transactional_chain_stops_on_it() -> None:
    chain: Any = SimpleNamespace(topic="jizhi.p.requests", assigned={0})
    with pytest.raises(TransportError, match="fenced"):
        TransactionalChain._take(chain, [_message(FENCED)])


def test_the_source_records_it_as_fatal() -> None:
    source: Any = SimpleNamespace(topic="jizhi.p.requests", _fatal=None)
    KafkaSource._message_error(source, _message(FENCED), FENCED)
    assert source._fatal is FENCED
