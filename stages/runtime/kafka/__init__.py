"""Kafka consumer groups and producers behind the runner's Source and Sink: the only module of
stages/ that imports confluent-kafka.

At-least-once (the default): an input offset is stored for commit only once the output it produced
(the next stage's event, an answer, or a dead letter) has been acknowledged by the broker;
librdkafka then commits stored offsets every ``auto.commit.interval.ms``, and the source commits
synchronously on revoke and on close. On a cooperative rebalance the revoked partitions' in-flight
work is given time to finish and is committed before the partitions are handed over.

Exactly-once (optional, `TransactionalChain`): one synchronous loop per chain consumes a batch,
runs every stage of the chain on it, produces the outputs and commits the input offsets in one
Kafka transaction. Readers use ``read_committed`` (librdkafka's default), so aborted outputs are
never seen.

The allocator's control topic (``jizhi.<pipeline>.control``: admission rate, assignment plans,
workers' claims) is read by `ControlFollower`; with a plan for its stage a source leaves the
group and follows the plan (see `stages.runtime.control`).

Every admin request (topics, partitions, offsets, groups) of jizhi goes through `KafkaAdmin`.
"""

from stages.runtime.kafka.admin import KafkaAdmin
from stages.runtime.kafka.control import (
    ControlFollower,
    ControlPublisher,
    PlanControl,
    control_topic,
    ensure_control_topic,
)
from stages.runtime.kafka.producer import Encoder, Headers, KafkaSink, SharedProducer
from stages.runtime.kafka.source import KafkaSource, consume_batch
from stages.runtime.kafka.topics import (
    REQUESTS_MAX_MESSAGE_BYTES,
    TransportError,
    ensure_pipeline_topics,
    ensure_topics,
    group_id,
    input_topic,
    output_topic,
    pipeline_topics,
    topic_name,
)
from stages.runtime.kafka.transactional import ChainOutputs, Output, TransactionalChain
from stages.runtime.kafka.worker import Deployment, KafkaOptions, KafkaWorker

__all__ = [
    "REQUESTS_MAX_MESSAGE_BYTES",
    "ChainOutputs",
    "ControlFollower",
    "ControlPublisher",
    "Deployment",
    "Encoder",
    "Headers",
    "KafkaAdmin",
    "KafkaOptions",
    "KafkaSink",
    "KafkaSource",
    "KafkaWorker",
    "Output",
    "PlanControl",
    "SharedProducer",
    "TransactionalChain",
    "TransportError",
    "consume_batch",
    "control_topic",
    "ensure_control_topic",
    "ensure_pipeline_topics",
    "ensure_topics",
    "group_id",
    "input_topic",
    "output_topic",
    "pipeline_topics",
    "topic_name",
]
