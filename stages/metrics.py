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

# The exposed names, for whoever reads them back (the allocator's scrape, benches, tests) to
# import instead of copying. A counter's is its sample name, with ``_total`` (prometheus_client
# strips it from the family name and puts it back on the sample); a histogram's samples add
# ``_bucket``, ``_sum`` and ``_count``.
EVENTS_NAME: Final = "jizhi_stage_events_total"
REQUESTS_NAME: Final = "jizhi_requests_total"
BATCH_SIZE_NAME: Final = "jizhi_stage_batch_size"
PROCESSING_NAME: Final = "jizhi_stage_processing_seconds"
STAGE_LATENCY_NAME: Final = "jizhi_stage_latency_seconds"
QUEUE_DEPTH_NAME: Final = "jizhi_stage_queue_depth"
RESPONSES_NAME: Final = "jizhi_responses_total"
REQUEST_LATENCY_NAME: Final = "jizhi_request_latency_seconds"
DEADLINE_BUDGET_NAME: Final = "jizhi_request_budget_seconds"
SHED_LEVEL_NAME: Final = "jizhi_ingest_admission_rate"
CONSUMER_LAG_NAME: Final = "jizhi_consumer_lag"
DELIVERY_ERRORS_NAME: Final = "jizhi_kafka_delivery_errors_total"

EVENTS: Final = Counter(
    EVENTS_NAME,
    "Events a stage finished, by outcome (ok, expired, shed, invalid, duplicate, dead_letter).",
    ["pipeline", "stage", "outcome"],
)
REQUESTS: Final = Counter(
    REQUESTS_NAME,
    "Requests read by a pipeline's edge stage (whatever its name), every outcome included.",
    ["pipeline"],
)
BATCH_SIZE: Final = Histogram(
    BATCH_SIZE_NAME,
    "Events per micro-batch handed to a stage.",
    ["pipeline", "stage"],
    buckets=BATCH_BUCKETS,
)
PROCESSING: Final = Histogram(
    PROCESSING_NAME,
    "Time a stage spent in process() per micro-batch.",
    ["pipeline", "stage"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY: Final = BatchHistogram(
    STAGE_LATENCY_NAME,
    "Time from a request's creation until this stage finished it (end-to-end so far).",
    ["pipeline", "stage"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH: Final = Gauge(
    QUEUE_DEPTH_NAME,
    "Events waiting in a stage's in-memory input queue.",
    ["pipeline", "stage"],
)
RESPONSES: Final = Counter(
    RESPONSES_NAME,
    "Requests answered, by status.",
    ["pipeline", "status"],
)
REQUEST_LATENCY: Final = BatchHistogram(
    REQUEST_LATENCY_NAME,
    "End-to-end latency of answered requests, from creation to answer, by status.",
    ["pipeline", "status"],
    buckets=LATENCY_BUCKETS,
)
DEADLINE_BUDGET: Final = BatchHistogram(
    DEADLINE_BUDGET_NAME,
    "The deadline budget (deadline minus creation) of admitted requests.",
    ["pipeline"],
    buckets=LATENCY_BUCKETS,
)
SHED_LEVEL: Final = Gauge(
    SHED_LEVEL_NAME,
    "Admission rate limit in requests/s that ingest currently applies (0 = unlimited).",
    ["pipeline"],
)
CONSUMER_LAG: Final = Gauge(
    CONSUMER_LAG_NAME,
    "Messages between a partition's end and the stage's consumed position (from librdkafka).",
    ["pipeline", "stage", "topic", "partition"],
)
DELIVERY_ERRORS: Final = Counter(
    DELIVERY_ERRORS_NAME,
    "Records the broker did not acknowledge after librdkafka's retries.",
    ["pipeline", "topic"],
)
