"""How stages run: micro-batching runners, in-memory queues between stages of one process, and
(in `stages.runtime.kafka`) Kafka consumer groups between processes."""

from stages.runtime.chain import Chain, ChainError
from stages.runtime.channel import BoundedQueue, CallbackSink, Envelope, Sink, Source, Ticket
from stages.runtime.runner import BatchPolicy, Routes, StageRunner

__all__ = [
    "BatchPolicy",
    "BoundedQueue",
    "CallbackSink",
    "Chain",
    "ChainError",
    "Envelope",
    "Routes",
    "Sink",
    "Source",
    "StageRunner",
    "Ticket",
]
