"""The Grafana dashboards are what dashboards/build.py generates, are shaped as Grafana's JSON
model expects, read only metrics a jizhi metrics module defines, and match their provisioning."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import build

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
FILES = sorted(DASHBOARDS.glob("*.json"))
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "text", "state-timeline"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__range"}
_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_every_dashboard_file_is_generated_and_up_to_date() -> None:
    assert {p.name for p in FILES} == {d.file for d in build.DASHBOARDS}
    for d in build.DASHBOARDS:
        assert (DASHBOARDS / d.file).read_text() == build.dumps(d), (
            f"{d.file} is out of date: run `python dashboards/build.py`"
        )


def test_uids_and_titles_are_unique_and_valid() -> None:
    boards = [_load(p) for p in FILES]
    uids = [b["uid"] for b in boards]
    titles = [b["title"] for b in boards]
    assert len(set(uids)) == len(uids)
    assert len(set(titles)) == len(titles)
    for uid in uids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid), uid


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_top_level_fields(path: Path) -> None:
    d = _load(path)
    for key, kind in {
        "uid": str,
        "title": str,
        "tags": list,
        "panels": list,
        "templating": dict,
        "time": dict,
        "schemaVersion": int,
        "annotations": dict,
        "links": list,
    }.items():
        assert isinstance(d.get(key), kind), f"{path.name}: {key} missing or not {kind.__name__}"
    assert d["id"] is None, "a provisioned dashboard must not carry a database id"
    assert d["schemaVersion"] >= 36, "timeseries panels and datasource refs need schema >= 36"
    assert isinstance(d["templating"].get("list"), list)
    assert {"from", "to"} <= d["time"].keys()
    assert build.TAG in d["tags"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_panels_are_well_formed(path: Path) -> None:
    d = _load(path)
    panels = _panels(d)
    assert panels, f"{path.name} has no panels"
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        where = f"{path.name} panel {p.get('title')!r}"
        assert p["type"] in PANEL_TYPES, where
        assert isinstance(p.get("title"), str) and p["title"], where
        pos = p["gridPos"]
        assert {"h", "w", "x", "y"} <= pos.keys(), where
        assert all(isinstance(pos[k], int) and pos[k] >= 0 for k in "hwxy"), where
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] + pos["w"] <= 24, where
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{where} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == build.DATASOURCE, where
        assert p.get("description"), f"{where} has no description"
        defaults = p["fieldConfig"]["defaults"]
        assert defaults.get("unit"), f"{where} has no unit"
        steps = defaults["thresholds"]["steps"]
        assert defaults["thresholds"]["mode"] in ("absolute", "percentage"), where
        assert steps[0]["value"] is None, f"{where}: the first threshold step is the base"
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values), f"{where}: thresholds out of order"
        if defaults["unit"] == "percentunit":
            assert defaults.get("min") == 0 and defaults.get("max") == 1, where
        targets = p["targets"]
        assert targets, f"{where} has no query"
        refs = [t["refId"] for t in targets]
        assert len(set(refs)) == len(refs), f"{where}: duplicate refIds"
        for t in targets:
            assert t["datasource"] == build.DATASOURCE, where
            assert t["expr"].strip(), where
            assert t["expr"].count("(") == t["expr"].count(")"), f"{where}: {t['expr']}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_variable_used_is_defined(path: Path) -> None:
    d = _load(path)
    defined = {v["name"] for v in d["templating"]["list"]}
    for v in d["templating"]["list"]:
        assert v["type"] == "query" and v["datasource"] == build.DATASOURCE, v["name"]
        assert v["query"]["query"] == v["definition"], v["name"]
        if v.get("includeAll"):
            assert v.get("allValue"), f"{v['name']}: an All value keeps regex matchers valid"
    for panel, target in build.queries(d):
        used = {a or b for a, b in _VAR.findall(target["expr"])}
        missing = used - defined - BUILTIN_VARS
        assert not missing, f"{path.name} {panel['title']!r} uses undefined {missing}"
    assert defined <= set(build.VARIABLES)
    if any("$pipeline" in t["expr"] for _, t in build.queries(d)):
        assert "pipeline" in defined


def test_every_metric_a_dashboard_reads_is_defined_by_a_jizhi_module() -> None:
    known = build.known_series()
    assert "jizhi_stage_events_total" in known and "jizhi_store_hits_total" in known
    unknown: list[str] = []
    for path in FILES:
        d = _load(path)
        exprs = [t["expr"] for _, t in build.queries(d)]
        exprs += [v["definition"] for v in d["templating"]["list"]]
        for expr in exprs:
            names = build.metric_names(expr)
            assert names, f"{path.name}: {expr} reads no jizhi metric"
            unknown += [f"{path.name}: {n}" for n in sorted(names - known.keys())]
    assert not unknown, "metrics no jizhi module defines:\n" + "\n".join(unknown)


def test_required_panels_exist() -> None:
    titles = {d.uid: {p.title for row in d.rows for p in row.panels} for d in build.DASHBOARDS}
    assert {
        "Requests/s",
        "Answered by status",
        "End-to-end latency against the deadline",
        "Shed, expired and dead-lettered",
    } <= titles["jizhi-overview"]
    assert {
        "Events by stage and outcome",
        "Micro-batch size",
        "Processing time per batch",
        "Consumer lag by partition",
        "Processes running each stage",
    } <= titles["jizhi-stages"]
    assert {
        "Hit ratio per tier",
        "Lookup latency per batch",
        "Bytes held per tier",
        "Degraded lookups",
        "Backend up",
        "Backend errors by class",
    } <= titles["jizhi-storage"]
    assert {
        "Desired vs actual consumers",
        "Partitions per stage",
        "Admission limit",
        "Shed rate",
        "Decisions by stage, action and reason",
    } <= titles["jizhi-allocator"]


def test_the_allocator_board_reads_the_allocators_own_metrics() -> None:
    """Desired/actual consumers, partitions, shedding and decisions come from what the allocator
    exports, not from stand-ins computed out of the stages' metrics."""
    panels = {p.title: p for row in build.ALLOCATOR.rows for p in row.panels}
    reads = {
        title: {n for t in panel.targets for n in build.metric_names(t.expr)}
        for title, panel in panels.items()
    }
    assert {
        "jizhi_allocator_desired_consumers",
        "jizhi_allocator_actual_consumers",
    } <= reads["Desired vs actual consumers"]
    assert reads["Partitions per stage"] == {"jizhi_allocator_partitions"}
    assert "jizhi_allocator_admission_rate" in reads["Admission limit"]
    assert "jizhi_allocator_shed_rate" in reads["Shed rate"]
    assert reads["Decisions by stage, action and reason"] == {"jizhi_allocator_decisions_total"}
    (decisions,) = panels["Decisions by stage, action and reason"].targets
    assert "sum by (stage, action, reason)" in decisions.expr
    storage = {p.title: p for row in build.STORAGE.rows for p in row.panels}
    (degraded,) = storage["Degraded lookups"].targets
    assert build.metric_names(degraded.expr) == {"jizhi_store_degraded_total"}


def test_provisioning_points_grafana_at_the_dashboards_and_prometheus() -> None:
    prov = DASHBOARDS / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == build.DATASOURCE_UID
    assert source["isDefault"] is True
    assert source["url"].startswith("http://")
    providers = yaml.safe_load((prov / "dashboards" / "jizhi.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
