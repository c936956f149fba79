"""The Grafana dashboard is well formed and queries only metrics that fracgpu defines."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.manifests.render import ROOT

DASHBOARD = ROOT / "dashboards" / "fracgpu.json"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard()["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def base_name(metric: str) -> str:
    """The name a metric is declared with: prometheus_client adds _total to counters and
    _bucket/_count/_sum to histograms (and _created to both)."""
    for suffix in _SUFFIXES:
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


def defined_metrics(package: Path = ROOT / "fracgpu") -> set[str]:
    """Metric names declared in the code: string literals "fracgpu_..." and `PREFIX + "..."` where the
    module sets PREFIX = "fracgpu_..."."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        text = path.read_text()
        names |= {n for n in re.findall(r"[\"'](fracgpu_[a-z0-9_]+)[\"']", text) if not n.endswith("_")}
        for var, prefix in re.findall(r"^(\w+)\s*(?::\s*\w+)?\s*=\s*[\"'](fracgpu_[a-z0-9_]*)[\"']", text, re.M):
            names |= {prefix + rest for rest in re.findall(rf"\b{var}\s*\+\s*[\"']([a-z0-9_]+)[\"']", text)}
    return {base_name(n) for n in names}


def queried_metrics() -> set[str]:
    exprs = [t["expr"] for p in panels() for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\bfracgpu_[a-z0-9_]+", e)}


def test_the_metric_finder_sees_literals_and_prefixes(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        'PREFIX = "fracgpu_x_"\nA = Counter(PREFIX + "evictions", "")\nB = Gauge("fracgpu_y_total", "")\n'
    )
    assert defined_metrics(tmp_path) == {"fracgpu_x_evictions", "fracgpu_y"}


def test_every_queried_metric_is_defined_in_the_code() -> None:
    queried = queried_metrics()
    assert queried
    missing = sorted(m for m in queried if base_name(m) not in defined_metrics())
    assert missing == [], f"the dashboard queries metrics no fracgpu program exposes: {missing}"


@pytest.mark.parametrize("area", ["fracgpu_gpu_", "fracgpu_extender_", "fracgpu_deviceplugin_",
                                  "fracgpu_controller_", "fracgpu_webhook_", "fracgpu_tenant_"])
def test_every_area_has_a_panel(area: str) -> None:
    assert any(m.startswith(area) for m in queried_metrics())


def test_panels_are_well_formed() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    (var,) = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for p in panels():
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels():
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_the_tenant_row_shows_used_against_hard_and_pending() -> None:
    by_title = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in panels()}
    assert "Tenants" in by_title
    exprs = [e for es in by_title.values() for e in es]
    for resource in ("fracgpu.io/vgpu-core", "fracgpu.io/vgpu-memory"):
        assert any(f'fracgpu_tenant_used{{resource="{resource}"}}' in e
                   and f'fracgpu_tenant_hard{{resource="{resource}"}}' in e for e in exprs), resource
    assert any("fracgpu_tenant_pending" in e for e in exprs)
