"""The Grafana dashboards, generated: the one source of truth for dashboards/*.json.

    python dashboards/build.py            # (re)write the JSON files beside this script
    python dashboards/build.py --check    # exit 1 if a JSON file differs from what this builds

Every query reads only metrics that a jizhi package names in its ``metrics`` module
(``stages.metrics``, ``storage.metrics``, ``allocator.metrics``);
``tests/unit/test_dashboard_json.py`` checks that, and ``tests/integration/test_dashboards.py``
runs every query against a real Prometheus.

Queries use Grafana's variables ``$pipeline``, ``$stage``, ``$table``, ``$tier`` and
``$__rate_interval``; `VARIABLES` lists them so tests can substitute them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

HERE: Final = Path(__file__).resolve().parent
DATASOURCE_UID: Final = "jizhi-prometheus"
DATASOURCE: Final = {"type": "prometheus", "uid": DATASOURCE_UID}
SCHEMA_VERSION: Final = 39
TAG: Final = "jizhi"
DEADLINE_S: Final = 0.2  # the default request budget (pipeline.default_timeout_ms = 200)

# Every variable a query may contain, as dashboards spell them.
VARIABLES: Final = ("pipeline", "stage", "table", "tier", "__rate_interval")

Unit = Literal["reqps", "ops", "s", "percentunit", "bytes", "none", "short"]
Color = Literal["green", "yellow", "orange", "red", "blue", "text"]

RI = "[$__rate_interval]"
P = 'pipeline="$pipeline"'
PS = 'pipeline="$pipeline", stage=~"$stage"'
TT = 'table=~"$table", tier=~"$tier"'


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    targets: Sequence[Target]
    unit: Unit
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12
    height: int = 8
    minimum: float | None = 0
    maximum: float | None = None
    # (value, colour) steps above the base colour; drawn as lines on a time series.
    thresholds: Sequence[tuple[float, Color]] = ()
    base_color: Color = "green"
    no_value: str | None = None
    stack: bool = False


@dataclass(frozen=True, slots=True)
class Row:
    title: str
    panels: Sequence[Panel]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    label: str
    query: str
    multi: bool = False
    include_all: bool = False


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    file: str
    rows: Sequence[Row]
    variables: Sequence[Variable] = field(default_factory=tuple)


PIPELINE_VAR = Variable("pipeline", "Pipeline", "label_values(jizhi_stage_events_total, pipeline)")
STAGE_VAR = Variable(
    "stage",
    "Stage",
    'label_values(jizhi_stage_events_total{pipeline="$pipeline"}, stage)',
    multi=True,
    include_all=True,
)


def _quantiles(
    metric: str, selector: str, by: str = "", qs: Sequence[float] = (0.5, 0.95, 0.99)
) -> list[Target]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}{RI})))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in qs
    ]


# -- the four dashboards ---------------------------------------------------------------------

OVERVIEW = Dashboard(
    uid="jizhi-overview",
    title="jizhi / Overview",
    description="Requests in, answers out by status, end-to-end latency against the deadline.",
    file="jizhi-overview.json",
    variables=(PIPELINE_VAR,),
    rows=(
        Row(
            "Traffic",
            (
                Panel(
                    "Requests/s",
                    "Requests read by the pipeline's edge stage (every outcome), per second.",
                    [Target(f"sum(rate(jizhi_requests_total{{{P}}}{RI}))")],
                    "reqps",
                    kind="stat",
                    width=6,
                    height=5,
                ),
                Panel(
                    "Answered ok",
                    "Share of answers with status ok (the rest expired, were shed or invalid).",
                    [
                        Target(
                            f'sum(rate(jizhi_responses_total{{{P}, status="ok"}}{RI}))'
                            f" / sum(rate(jizhi_responses_total{{{P}}}{RI}))"
                        )
                    ],
                    "percentunit",
                    kind="stat",
                    width=6,
                    height=5,
                    maximum=1,
                    base_color="red",
                    thresholds=((0.95, "yellow"), (0.99, "green")),
                ),
                Panel(
                    "Latency p99",
                    "End-to-end (creation to answer) 99th percentile over every answer.",
                    _quantiles("jizhi_request_latency_seconds", P, qs=(0.99,)),
                    "s",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=((DEADLINE_S * 0.5, "yellow"), (DEADLINE_S, "red")),
                ),
                Panel(
                    "Queued in memory",
                    "Events waiting in the in-memory queues in front of every stage.",
                    [Target(f"sum(jizhi_stage_queue_depth{{{P}}})")],
                    "short",
                    kind="stat",
                    width=6,
                    height=5,
                    thresholds=((100, "yellow"), (1000, "red")),
                ),
                Panel(
                    "Answered by status",
                    "Answers per second by status: ok, expired, shed, invalid.",
                    [
                        Target(
                            f"sum by (status) (rate(jizhi_responses_total{{{P}}}{RI}))",
                            "{{status}}",
                        )
                    ],
                    "reqps",
                    stack=True,
                ),
                Panel(
                    "End-to-end latency against the deadline",
                    "p50/p95/p99 of creation-to-answer time over every answer; the red line is "
                    "the default deadline budget (200 ms), the dashed series the median budget "
                    "requests were admitted with.",
                    [
                        *_quantiles("jizhi_request_latency_seconds", P),
                        Target(
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(jizhi_request_budget_seconds_bucket{{{P}}}{RI})))",
                            "deadline budget (median)",
                        ),
                    ],
                    "s",
                    thresholds=((DEADLINE_S, "red"),),
                ),
            ),
        ),
        Row(
            "Requests not served",
            (
                Panel(
                    "Shed, expired and dead-lettered",
                    "Events per second that a stage shed (admission control), found expired "
                    "(deadline passed before it) or sent to the dead letters (bad input).",
                    [
                        Target(
                            f'sum(rate(jizhi_stage_events_total{{{P}, outcome="shed"}}{RI}))',
                            "shed",
                        ),
                        Target(
                            f'sum(rate(jizhi_stage_events_total{{{P}, outcome="expired"}}{RI}))',
                            "expired",
                        ),
                        Target(
                            "sum(rate(jizhi_stage_events_total"
                            f'{{{P}, outcome="dead_letter"}}{RI}))',
                            "dead-lettered",
                        ),
                    ],
                    "ops",
                    thresholds=((1, "red"),),
                ),
                Panel(
                    "Expired by stage",
                    "Where requests run out of time: expired events per second by the stage "
                    "that found them expired.",
                    [
                        Target(
                            "sum by (stage) (rate(jizhi_stage_events_total"
                            f'{{{P}, outcome="expired"}}{RI}))',
                            "{{stage}}",
                        )
                    ],
                    "ops",
                ),
            ),
        ),
    ),
)

STAGES = Dashboard(
    uid="jizhi-stages",
    title="jizhi / Stages",
    description="Per stage: rate, micro-batch size, processing time, queues, consumer lag.",
    file="jizhi-stages.json",
    variables=(PIPELINE_VAR, STAGE_VAR),
    rows=(
        Row(
            "Throughput and batching",
            (
                Panel(
                    "Events by stage and outcome",
                    "Events each stage finished per second, by outcome.",
                    [
                        Target(
                            f"sum by (stage, outcome) (rate(jizhi_stage_events_total{{{PS}}}{RI}))",
                            "{{stage}} {{outcome}}",
                        )
                    ],
                    "ops",
                ),
                Panel(
                    "Micro-batch size",
                    "Mean and p95 events per micro-batch handed to process().",
                    [
                        Target(
                            f"sum by (stage) (rate(jizhi_stage_batch_size_sum{{{PS}}}{RI}))"
                            " / sum by (stage) "
                            f"(rate(jizhi_stage_batch_size_count{{{PS}}}{RI}))",
                            "mean {{stage}}",
                        ),
                        *_quantiles("jizhi_stage_batch_size", PS, "stage", qs=(0.95,)),
                    ],
                    "short",
                ),
                Panel(
                    "Processing time per batch",
                    "Time in process() per micro-batch, p50 and p99.",
                    _quantiles("jizhi_stage_processing_seconds", PS, "stage", qs=(0.5, 0.99)),
                    "s",
                    thresholds=((0.05, "yellow"), (0.1, "red")),
                ),
                Panel(
                    "Latency when a stage is done (end-to-end so far)",
                    "p99 of creation-to-stage-done time: the difference between two "
                    "consecutive stages is the time spent between and in them.",
                    _quantiles("jizhi_stage_latency_seconds", PS, "stage", qs=(0.99,)),
                    "s",
                    thresholds=((DEADLINE_S, "red"),),
                ),
            ),
        ),
        Row(
            "Backlog and consumers",
            (
                Panel(
                    "In-memory queue depth",
                    "Events waiting in front of a stage inside one process (bounded queues).",
                    [
                        Target(
                            f"sum by (stage) (jizhi_stage_queue_depth{{{PS}}})",
                            "{{stage}}",
                        )
                    ],
                    "short",
                ),
                Panel(
                    "Consumer lag by partition",
                    "Messages between a partition's end and the stage's consumer group position "
                    "(Kafka workers only; a stage fed in memory has none).",
                    [
                        Target(
                            f"sum by (stage, topic, partition) (jizhi_consumer_lag{{{PS}}})",
                            "{{stage}} p{{partition}}",
                        )
                    ],
                    "short",
                    thresholds=((1000, "yellow"), (10000, "red")),
                ),
                Panel(
                    "Processes running each stage",
                    "Worker processes (scrape targets) exporting a stage's metrics; for the "
                    "first stage of a worker's chain, the consumers in its group.",
                    [
                        Target(
                            "count by (stage) (group by (stage, instance) "
                            f"(jizhi_stage_queue_depth{{{PS}}}))",
                            "{{stage}}",
                        )
                    ],
                    "short",
                ),
                Panel(
                    "Partitions owned",
                    "Partitions assigned to each stage's consumers (Kafka workers only).",
                    [
                        Target(
                            f"count by (stage) (jizhi_consumer_lag{{{PS}}})",
                            "{{stage}}",
                        )
                    ],
                    "short",
                ),
                Panel(
                    "Kafka delivery errors",
                    "Records the broker did not acknowledge after librdkafka's retries.",
                    [
                        Target(
                            f"sum by (topic) (rate(jizhi_kafka_delivery_errors_total{{{P}}}{RI}))",
                            "{{topic}}",
                        )
                    ],
                    "ops",
                    no_value="0",
                    thresholds=((0.001, "red"),),
                    width=24,
                ),
            ),
        ),
    ),
)

_HITS = f"sum by (table, tier) (rate(jizhi_store_hits_total{{{TT}}}{RI}))"
_MISSES = f"sum by (table, tier) (rate(jizhi_store_misses_total{{{TT}}}{RI}))"

STORAGE = Dashboard(
    uid="jizhi-storage",
    title="jizhi / Storage",
    description="Embedding store tiers: hit ratio, lookup latency, fallbacks, degraded lookups, "
    "backend health, bytes held.",
    file="jizhi-storage.json",
    variables=(
        Variable("table", "Table", "label_values(jizhi_store_hits_total, table)", True, True),
        Variable("tier", "Tier", "label_values(jizhi_store_hits_total, tier)", True, True),
    ),
    rows=(
        Row(
            "Lookups",
            (
                Panel(
                    "Hit ratio per tier",
                    "Share of ids a tier answered with a row (the cache tier: the local cache "
                    "hit ratio; a backend tier only sees the cache's misses).",
                    # Only series with lookups in the window: an idle tier has no ratio.
                    [Target(f"{_HITS} / (({_HITS} + {_MISSES}) > 0)", "{{tier}} {{table}}")],
                    "percentunit",
                    maximum=1,
                    base_color="red",
                    thresholds=((0.5, "yellow"), (0.8, "green")),
                ),
                Panel(
                    "Ids looked up per tier",
                    "Ids per second each tier was asked for (hits + misses).",
                    [Target(f"{_HITS} + {_MISSES}", "{{tier}} {{table}}")],
                    "ops",
                ),
                Panel(
                    "Lookup latency per batch",
                    "Time of one batch lookup in a tier, p50 and p99.",
                    _quantiles("jizhi_store_lookup_seconds", TT, "tier", qs=(0.5, 0.99)),
                    "s",
                    thresholds=((0.005, "yellow"), (0.02, "red")),
                ),
                Panel(
                    "Fallbacks (no row anywhere)",
                    "Ids per second that no tier had, answered with the zero vector.",
                    [
                        Target(
                            "sum by (table) "
                            f'(rate(jizhi_store_fallback_total{{table=~"$table"}}{RI}))',
                            "{{table}}",
                        )
                    ],
                    "ops",
                    thresholds=((1, "yellow"),),
                ),
            ),
        ),
        Row(
            "Backend health",
            (
                Panel(
                    "Degraded lookups",
                    "Ids per second answered with zeros because the backend could not be asked "
                    "in time (unreachable, slow, circuit breaker open), as opposed to ids it has "
                    "no row for (Fallbacks).",
                    [
                        Target(
                            "sum by (table) "
                            f'(rate(jizhi_store_degraded_total{{table=~"$table"}}{RI}))',
                            "{{table}}",
                        )
                    ],
                    "ops",
                    no_value="0",
                    thresholds=((0.001, "red"),),
                ),
                Panel(
                    "Backend up",
                    "1 while a remote backend answers (circuit breaker closed), 0 while its "
                    "lookups are degraded; the lowest over processes. Empty without a remote "
                    "backend (the embedded store has none).",
                    [Target("min by (backend) (jizhi_store_backend_up)", "{{backend}}")],
                    "none",
                    maximum=1,
                    base_color="red",
                    thresholds=((1, "green"),),
                ),
                Panel(
                    "Backend errors by class",
                    "Failed backend calls per second by error class: what retries and the "
                    "circuit breaker absorb.",
                    [
                        Target(
                            f"sum by (backend, error) (rate(jizhi_store_backend_errors_total{RI}))",
                            "{{backend}} {{error}}",
                        )
                    ],
                    "ops",
                    no_value="0",
                    width=24,
                    thresholds=((0.001, "red"),),
                ),
            ),
        ),
        Row(
            "Capacity",
            (
                Panel(
                    "Bytes held per tier",
                    "Cache: live entries; embedded: rows on disk. Summed over processes.",
                    [
                        Target(
                            f"sum by (table, tier) (jizhi_store_bytes{{{TT}}})",
                            "{{tier}} {{table}}",
                        )
                    ],
                    "bytes",
                    width=24,
                ),
            ),
        ),
    ),
)

ALLOCATOR = Dashboard(
    uid="jizhi-allocator",
    title="jizhi / Allocator",
    description="The allocator's own view: desired against actual consumers, partitions, lag, "
    "service rate, the admission limit it sets, and every decision with its reason.",
    file="jizhi-allocator.json",
    variables=(PIPELINE_VAR, STAGE_VAR),
    rows=(
        Row(
            "Consumers and partitions",
            (
                Panel(
                    "Desired vs actual consumers",
                    "Consumers the allocator wants for a stage against those its actuator "
                    "reports running; 'exporting metrics' counts the worker processes Prometheus "
                    "scrapes for the stage (differs from 'actual' under --dry-run, or for "
                    "workers the allocator did not start).",
                    [
                        Target(
                            f"max by (stage) (jizhi_allocator_desired_consumers{{{PS}}})",
                            "desired {{stage}}",
                        ),
                        Target(
                            f"max by (stage) (jizhi_allocator_actual_consumers{{{PS}}})",
                            "actual {{stage}}",
                        ),
                        Target(
                            "count by (stage) (group by (stage, instance) "
                            f"(jizhi_stage_queue_depth{{{PS}}}))",
                            "exporting metrics {{stage}}",
                        ),
                    ],
                    "short",
                ),
                Panel(
                    "Partitions per stage",
                    "Partitions of each stage's input topic, as the allocator last read them "
                    "(the ceiling on its consumers).",
                    [
                        Target(
                            f"max by (stage) (jizhi_allocator_partitions{{{PS}}})",
                            "{{stage}}",
                        )
                    ],
                    "short",
                ),
                Panel(
                    "Lag per stage",
                    "The allocator's main input: end offset minus the group's committed offset, "
                    "summed over partitions, at its last look.",
                    [Target(f"max by (stage) (jizhi_allocator_lag{{{PS}}})", "{{stage}}")],
                    "short",
                    thresholds=((1000, "yellow"), (10000, "red")),
                ),
                Panel(
                    "Service rate per consumer",
                    "Events one consumer of a stage finishes per busy second (from the workers "
                    "the allocator scrapes): the capacity it sizes consumers against.",
                    [
                        Target(
                            f"max by (stage) (jizhi_allocator_service_rate{{{PS}}})",
                            "{{stage}}",
                        )
                    ],
                    "ops",
                ),
            ),
        ),
        Row(
            "Shedding",
            (
                Panel(
                    "Admission limit",
                    "Requests/s ingest may admit: the limit the allocator set, and the one "
                    "ingest reports applying (0 = unlimited).",
                    [
                        Target(f"max(jizhi_allocator_admission_rate{{{P}}})", "set by allocator"),
                        Target(f"max(jizhi_ingest_admission_rate{{{P}}})", "applied at ingest"),
                    ],
                    "reqps",
                ),
                Panel(
                    "Shed rate",
                    "Requests/s answered 'shed' as the allocator measured them over its last "
                    "look, and as the stages counted them.",
                    [
                        Target(f"max(jizhi_allocator_shed_rate{{{P}}})", "allocator's view"),
                        Target(
                            f'sum(rate(jizhi_stage_events_total{{{P}, outcome="shed"}}{RI}))',
                            "shed by stages",
                        ),
                    ],
                    "reqps",
                ),
            ),
        ),
        Row(
            "Deadline",
            (
                Panel(
                    "p99 the allocator acts on",
                    "p99 end-to-end latency of 'ok' answers over the allocator's last look, "
                    "from the workers' histograms; the shedding controller lowers admission "
                    "above 95% of the deadline and raises it below 60%.",
                    [Target(f"max(jizhi_allocator_p99_seconds{{{P}}})", "p99")],
                    "s",
                    thresholds=((DEADLINE_S * 0.95, "orange"), (DEADLINE_S, "red")),
                ),
                Panel(
                    "Deadline misses",
                    "Requests/s answered 'expired' (their deadline passed inside the pipeline) "
                    "as the allocator measured them over its last look.",
                    [Target(f"max(jizhi_allocator_expired_rate{{{P}}})", "expired")],
                    "reqps",
                    no_value="0",
                ),
            ),
        ),
        Row(
            "Decisions",
            (
                Panel(
                    "Decisions by stage, action and reason",
                    "Decisions per rate interval: action consumers, partitions or admission, "
                    "with the policy's named reason (scale_up_lag, hold, latency_high, ...). "
                    "Under --dry-run they are counted but not acted on.",
                    [
                        Target(
                            "sum by (stage, action, reason) "
                            f"(increase(jizhi_allocator_decisions_total{{{PS}}}{RI}))",
                            "{{stage}} {{action}} {{reason}}",
                        )
                    ],
                    "short",
                    width=16,
                    stack=True,
                ),
                Panel(
                    "Allocator errors",
                    "Looks that failed per rate interval, by phase (observe, act) and whether a "
                    "retry can help.",
                    [
                        Target(
                            "sum by (phase, retriable) "
                            f"(increase(jizhi_allocator_errors_total{{{P}}}{RI}))",
                            "{{phase}} retriable={{retriable}}",
                        )
                    ],
                    "short",
                    width=8,
                    no_value="0",
                    thresholds=((1, "red"),),
                ),
            ),
        ),
    ),
)

DASHBOARDS: Final = (OVERVIEW, STAGES, STORAGE, ALLOCATOR)


# -- rendering -------------------------------------------------------------------------------


def _thresholds(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": panel.base_color, "value": None}]
    steps += [{"color": color, "value": value} for value, color in panel.thresholds]
    return {"mode": "absolute", "steps": steps}


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": _thresholds(panel)}
    if panel.minimum is not None:
        defaults["min"] = panel.minimum
    if panel.maximum is not None:
        defaults["max"] = panel.maximum
    if panel.no_value is not None:
        defaults["noValue"] = panel.no_value
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if panel.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"},
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": dict(DATASOURCE),
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": dict(DATASOURCE),
                "editorMode": "code",
                "expr": t.expr,
                "legendFormat": t.legend or "__auto",
                "range": True,
                "instant": False,
            }
            for i, t in enumerate(panel.targets)
        ],
    }


def _variable_json(v: Variable) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": dict(DATASOURCE),
        "definition": v.query,
        "query": {"query": v.query, "refId": f"{v.name}-values"},
        "refresh": 2,  # on time range change
        "sort": 1,
        "multi": v.multi,
        "includeAll": v.include_all,
        "current": {},
        "options": [],
        "hide": 0,
        "regex": "",
    }
    if v.include_all:
        out["allValue"] = ".+"
    return out


def render(d: Dashboard) -> dict[str, Any]:
    """A dashboard as Grafana's JSON model; rows are full-width row panels, the panels below
    each row flow left to right in a 24-column grid."""
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, pid, x, y))
            pid += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "id": None,
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": [TAG],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "jizhi",
                "tags": [TAG],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "tooltip": "",
                "url": "",
                "targetBlank": False,
            }
        ],
        "templating": {"list": [_variable_json(v) for v in d.variables]},
        "panels": panels,
    }


def dumps(d: Dashboard) -> str:
    return json.dumps(render(d), indent=2, sort_keys=False) + "\n"


# -- helpers the tests share -----------------------------------------------------------------

_NAME = re.compile(r"\b(jizhi_[a-z0-9_]+)\b")
_HIST_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of a rendered dashboard, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner, target


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression reads (every jizhi metric is prefixed ``jizhi_``)."""
    return set(_NAME.findall(expr))


def base_name(series: str, histograms: set[str]) -> str:
    """``x_bucket`` -> ``x`` when ``x`` is a histogram; other names unchanged."""
    stripped = _HIST_SUFFIX.sub("", series)
    return stripped if stripped in histograms else series


METRICS_MODULES: Final = ("stages.metrics", "storage.metrics", "allocator.metrics")
_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def known_series() -> dict[str, str]:
    """Every series name a jizhi metrics module defines -> the module that defines it.

    Read from the modules themselves (each package names its metrics in one module), so a
    dashboard can be checked against them without a running process. A module that does not
    exist yet (e.g. ``allocator.metrics`` before the allocator lands) is skipped.
    """
    import importlib  # noqa: PLC0415 - only the tests and --check need the packages

    out: dict[str, str] = {}
    for module_name in METRICS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
        for value in vars(module).values():
            collect = getattr(value, "collect", None)
            if isinstance(value, type) or not callable(collect):
                continue
            for family in collect():
                for suffix in _SUFFIXES.get(family.type, ("",)):
                    out[family.name + suffix] = module_name
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    parser.add_argument("--out", type=Path, default=HERE, help="where to write (this folder)")
    args = parser.parse_args(argv)
    if str(HERE.parent) not in sys.path:  # run as a script: make the repo's packages importable
        sys.path.insert(0, str(HERE.parent))
    stale = []
    for d in DASHBOARDS:
        path = args.out / d.file
        text = dumps(d)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    known = known_series()
    unknown = sorted(
        {
            name
            for d in DASHBOARDS
            for _, target in queries(render(d))
            for name in metric_names(target["expr"])
            if name not in known
        }
    )
    if unknown:
        print(f"no jizhi metrics module defines: {', '.join(unknown)}", file=sys.stderr)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python dashboards/build.py", file=sys.stderr)
    return 1 if stale or unknown else 0


if __name__ == "__main__":
    sys.exit(main())
