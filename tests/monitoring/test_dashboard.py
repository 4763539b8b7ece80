"""monitoring/dashboard.json: importable into Grafana as is, every query valid PromQL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.dashboards import DASHBOARD, dashboard_queries


@pytest.mark.unit
def test_dashboard_is_importable_as_is() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # Import asks for the data source once; every panel and query uses it.
    assert [entry["name"] for entry in document["__inputs"]] == ["DS_PROMETHEUS"]
    panels = [panel for panel in document["panels"] if panel["type"] != "row"]
    assert len(panels) >= 20
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"])
    titles = " ".join(panel["title"] for panel in panels)
    for topic in ("Agents running", "waiting", "first token", "Tokens", "cache", "Requests", "Memory", "Disk"):
        assert topic in titles


@pytest.mark.unit
def test_every_dashboard_query_is_valid_promql(tmp_path: Path, promtool: str) -> None:
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": query.expr} for index, query in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [promtool, "check", "rules", "dashboard-rules.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(queries)} rules found" in checked.stdout
