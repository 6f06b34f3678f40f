"""Every metric the allocator exports; dashboards read exactly these names.

Labels are bounded sets: ``pipeline``, ``stage`` (five built-in stages), ``action`` and
``reason`` (the policies' named reasons, a closed list in `allocator.policy`).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge

DESIRED: Final = Gauge(
    "jizhi_allocator_desired_consumers",
    "Consumers the allocator wants for a stage.",
    ["pipeline", "stage"],
)
ACTUAL: Final = Gauge(
    "jizhi_allocator_actual_consumers",
    "Consumers the actuator reports running for a stage.",
    ["pipeline", "stage"],
)
PARTITIONS: Final = Gauge(
    "jizhi_allocator_partitions",
    "Partitions of a stage's input topic.",
    ["pipeline", "stage"],
)
LAG: Final = Gauge(
    "jizhi_allocator_lag",
    "Committed-offset lag of a stage's group, summed over partitions, as the allocator saw it.",
    ["pipeline", "stage"],
)
SERVICE_RATE: Final = Gauge(
    "jizhi_allocator_service_rate",
    "Measured events per busy second of one consumer of a stage.",
    ["pipeline", "stage"],
)
SHED_RATE: Final = Gauge(
    "jizhi_allocator_shed_rate",
    "Requests/s answered 'shed' at ingest over the last look.",
    ["pipeline"],
)
EXPIRED_RATE: Final = Gauge(
    "jizhi_allocator_expired_rate",
    "Deadline misses: requests/s answered 'expired' over the last look.",
    ["pipeline"],
)
P99: Final = Gauge(
    "jizhi_allocator_p99_seconds",
    "p99 end-to-end latency of 'ok' answers over the last look: what the shedding controller "
    "compares with the deadline.",
    ["pipeline"],
)
ADMISSION: Final = Gauge(
    "jizhi_allocator_admission_rate",
    "The admission limit the allocator set for ingest, requests/s (0 = unlimited).",
    ["pipeline"],
)
GRANTED: Final = Gauge(
    "jizhi_allocator_granted_consumers",
    "Consumers the core budget grants a stage (what is acted on; desired is what it asked).",
    ["pipeline", "stage"],
)
BUDGET: Final = Gauge(
    "jizhi_allocator_budget_consumers",
    "The core budget shared by every service (consumers); absent when unlimited.",
)
BUDGET_MET: Final = Gauge(
    "jizhi_allocator_budget_met",
    "Share of a service's need the budget sets aside for it (1 = all of it).",
    ["pipeline"],
)
DECISIONS: Final = Counter(
    "jizhi_allocator_decisions_total",
    "Decisions taken, by stage, action (consumers, partitions, assignment, admission, budget) "
    "and reason.",
    ["pipeline", "stage", "action", "reason"],
)
ERRORS: Final = Counter(
    "jizhi_allocator_errors_total",
    "Looks that failed, by phase (observe, scrape, act) and whether a retry can help.",
    ["pipeline", "phase", "retriable"],
)
