"""The dashboard's queries, as Prometheus (not Grafana) can run them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.conftest import REPO

DASHBOARD = REPO / "monitoring" / "dashboard.json"
# Grafana's variables, replaced by what Grafana would choose for a short range at a 5-15 s scrape.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str


def dashboard_queries() -> list[Query]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append(Query(panel["title"], expr))
    return queries
