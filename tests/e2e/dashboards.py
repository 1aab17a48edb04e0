"""The shipped Grafana dashboards evaluated against a real Prometheus, as a panel would query it: every target of
every panel as a range query over a time span, with the template variables filled in."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import ROOT

DASHBOARDS = ROOT / "cluster" / "grafana" / "dashboards"


def panel_queries(variables: dict[str, str], rate_interval: str = "1m") -> dict[str, str]:
    """`<dashboard>: <panel title> #<target>` -> its PromQL, `$var` and `$__rate_interval` filled in."""
    queries = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board.get("panels", []):
            for i, target in enumerate(panel.get("targets", [])):
                expr = target["expr"].replace("$__rate_interval", rate_interval)
                for name, value in variables.items():
                    expr = expr.replace(f"${name}", value)
                queries[f"{Path(path).stem}: {panel['title']} #{i}"] = expr
    return queries


def empty_panels(prometheus: str, start: float, end: float, variables: dict[str, str]) -> dict[str, str]:
    """The panel targets that have no point at all between `start` and `end` (epoch seconds); a query that
    Prometheus refuses counts as empty, with its error."""
    empty = {}
    for key, expr in panel_queries(variables).items():
        answer = httpx.get(f"{prometheus}/api/v1/query_range",
                           params={"query": expr, "start": start, "end": end, "step": "2s"}, timeout=30).json()
        if answer.get("status") != "success":
            empty[key] = f"{expr}: {answer.get('error')}"
        elif not any(series["values"] for series in answer["data"]["result"]):
            empty[key] = expr
    return empty
