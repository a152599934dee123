"""The Prometheus rules (docker/rules/fairsteer.rules.yml): promtool's unit tests pass, compose's
Prometheus loads the file, and the Kubernetes PrometheusRule is generated from it (one source)."""

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from observability.dashboards import prometheus_tool

from server import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docker" / "rules"
SOURCE = RULES / "fairsteer.rules.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([prometheus_tool("promtool"), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=RULES)


@pytest.mark.parametrize("tests", ["fairsteer.rules.test.yml", "fairsteer.drift.test.yml"])
def test_promtool_unit_tests_of_the_rules_pass(tests):
    result = _promtool("test", "rules", tests)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_unit_tests_can_fail(tmp_path):
    # A rule file whose alert never fires makes the same tests fail.
    rules = yaml.safe_load(SOURCE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "FairsteerAdapterVersionMismatch":
                rule["expr"] = "fairsteer:adapter_versions:count > 2"
    (tmp_path / "fairsteer.rules.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "fairsteer.rules.test.yml").write_text((RULES / "fairsteer.rules.test.yml").read_text())
    result = subprocess.run([prometheus_tool("promtool"), "test", "rules", "fairsteer.rules.test.yml"],
                            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode != 0 and "FairsteerAdapterVersionMismatch" in result.stdout + result.stderr


def test_rules_name_only_metrics_defined_by_fairsteer_vllm_or_these_rules():
    rules = [r for g in yaml.safe_load(SOURCE.read_text())["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    for rule in rules:
        for name in re.findall(r"\b(fairsteer[_:][a-z0-9_:]+|vllm:[a-z0-9_:]+)", rule["expr"]):
            assert name in metrics.EXPOSED_NAMES | recorded, f"{rule.get('record') or rule['alert']} names {name}"
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"FairsteerDown", "FairsteerAdapterVersionMismatch", "FairsteerMetricsCountingErrors",
            "FairsteerGroupShareDrift"} <= alerts


def test_compose_prometheus_loads_the_rules():
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert list((ROOT / "docker").glob(config["rule_files"][0])) == [SOURCE]
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert "./rules:/etc/prometheus/rules:ro" in compose["services"]["prometheus"]["volumes"]
    check = subprocess.run([prometheus_tool("promtool"), "check", "config", str(ROOT / "docker" / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0 and "1 rule files found" in check.stdout, check.stdout + check.stderr


def test_prometheus_rule_manifest_is_generated_from_the_rules_file():
    spec = importlib.util.spec_from_file_location("sync_rules", ROOT / "deploy" / "k8s" / "sync_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text() == module.render(), "stale: run .venv/bin/python deploy/k8s/sync_rules.py"
