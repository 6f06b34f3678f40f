"""Every metric the stages and their runtime export; dashboards read exactly these names.

Labels are bounded sets (pipeline, stage, outcome, status), never request ids.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from stages.histogram import BatchHistogram

LATENCY_BUCKETS: Final = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    5.0,
)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

EVENTS: Final = Counter(
    "jizhi_stage_events_total",
    "Events a stage finished, by outcome (ok, expired, shed, invalid, dead_letter).",
    ["pipeline", "stage", "outcome"],
)
BATCH_SIZE: Final = Histogram(
    "jizhi_stage_batch_size",
    "Events per micro-batch handed to a stage.",
    ["pipeline", "stage"],
    buckets=BATCH_BUCKETS,
)
PROCESSING: Final = Histogram(
    "jizhi_stage_processing_seconds",
    "Time a stage spent in process() per micro-batch.",
    ["pipeline", "stage"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY: Final = BatchHistogram(
    "jizhi_stage_latency_seconds",
    "Time from a request's creation until this stage finished it (end-to-end so far).",
    ["pipeline", "stage"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH: Final = Gauge(
    "jizhi_stage_queue_depth",
    "Events waiting in a stage's in-memory input queue.",
    ["pipeline", "stage"],
)
RESPONSES: Final = Counter(
    "jizhi_responses_total",
    "Requests answered, by status.",
    ["pipeline", "status"],
)
REQUEST_LATENCY: Final = BatchHistogram(
    "jizhi_request_latency_seconds",
    "End-to-end latency of answered requests, from creation to answer, by status.",
    ["pipeline", "status"],
    buckets=LATENCY_BUCKETS,
)
DEADLINE_BUDGET: Final = BatchHistogram(
    "jizhi_request_budget_seconds",
    "The deadline budget (deadline minus creation) of admitted requests.",
    ["pipeline"],
    buckets=LATENCY_BUCKETS,
)
SHED_LEVEL: Final = Gauge(
    "jizhi_ingest_admission_rate",
    "Admission rate limit in requests/s that ingest currently applies (0 = unlimited).",
    ["pipeline"],
)
CONSUMER_LAG: Final = Gauge(
    "jizhi_consumer_lag",
    "Messages between a partition's end and the stage's consumed position (from librdkafka).",
    ["pipeline", "stage", "topic", "partition"],
)
DELIVERY_ERRORS: Final = Counter(
    "jizhi_kafka_delivery_errors_total",
    "Records the broker did not acknowledge after librdkafka's retries.",
    ["pipeline", "topic"],
)
