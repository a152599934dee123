"""Helpers shared by the observability tests: the dashboards' queries, Grafana variables substituted,
and the Prometheus tools (installed on demand by install_prometheus.sh)."""

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARDS = DOCKER / "grafana" / "dashboards"
INSTALLER = Path(__file__).with_name("install_prometheus.sh")
METRIC_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool

    def concrete(self, rate_interval: str = "1m", range_: str = "5m") -> str:
        """The expression as Grafana sends it with every variable at "All" (".*")."""
        expr = self.expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
        return expr.replace("$model_name", ".*").replace("$adapter", ".*")


def queries() -> list[Query]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for t in panel.get("targets", []):
                found.append(Query(path.name, panel["title"], t["refId"], t["expr"], t.get("instant", False)))
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names in an expression; the generator always writes a selector, `name{...}`."""
    return set(METRIC_NAME.findall(expr))


def prometheus_tool(name: str) -> str:
    """Path of `prometheus` or `promtool`, installing Debian's package first if needed (CI runs as root)."""
    if shutil.which(name) is None:
        result = subprocess.run(["sh", str(INSTALLER)], check=False, capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or shutil.which(name) is None:
            pytest.fail(f"{name} is missing and {INSTALLER} could not install it: {result.stderr.strip()[-500:]}")
    return shutil.which(name)
