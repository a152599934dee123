"""deploy/k8s, checked offline: every kustomization renders; the core kinds validate strictly against the
Kubernetes 1.32 API schemas (kubernetes-validate); the CRD objects (PodMonitor, PrometheusRule,
ScaledObject), which those schemas lack, have the structure their operators read; and the manifests agree
with the code they deploy: probe paths are routes of the app, the container arguments parse with the real
`fairsteer serve` parser (and vLLM's, for the options after `--`), the grace period covers the drain, the
GPUs match the tensor-parallel size, the image tag is the package version. No cluster runs here: nothing
in this file applies a manifest."""

import copy
import importlib.util
import json
import re
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from server.security import OPEN_PATHS

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S_VERSION = "1.32.0"  # kubectl's here; the manifests use nothing newer
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Each kustomization an operator applies: the base and every overlay.
KUSTOMIZATIONS = ("base", "overlays/tensor-parallel", "overlays/autoscaling", "overlays/router")
CRD_KINDS = {"PodMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
             "ScaledObject": "keda.sh/v1alpha1"}


def _objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _servers(docs: list[dict]) -> list[dict]:
    """The fairsteer server Deployments (not the router's)."""
    return [d for d in _objects(docs, "Deployment")
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "server"]


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _selects(selector: dict, deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def _entrypoint() -> list[str]:
    """docker/Dockerfile's ENTRYPOINT (the container args follow it)."""
    line = re.search(r"^ENTRYPOINT (\[.*\])$", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)
    return json.loads(line.group(1))


def app_routes() -> set[str]:
    """The paths the server's app answers that probes and scrapes may use, assembled from the same pieces
    `fairsteer serve` installs: vLLM's health router and metrics mount, fairsteer's liveness route."""
    from fastapi import FastAPI
    from vllm.entrypoints.serve.instrumentator import health, metrics

    from server.health import add_liveness_route

    app = FastAPI()
    app.include_router(health.router)
    metrics.attach_router(app)
    add_liveness_route(app, engine_client=None)
    return {route.path for route in app.routes}


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return app_routes()


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_core_kinds_validate_strictly_and_only_known_crds_remain(rendered, path):
    docs = rendered[path]
    assert _servers(docs), f"{path} renders no fairsteer server Deployment"
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == CRD_KINDS[doc["kind"]], doc["metadata"]["name"]
            continue
        # Raises ValidationError on unknown fields (strict), SchemaNotFoundError on an unknown kind.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field(rendered):
    # The check above can fail: a field the API does not have is refused.
    deployment = copy.deepcopy(_servers(rendered["base"])[0])
    _container(deployment)["livenesProbe"] = _container(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_probe_paths_are_open_routes_of_the_app(rendered, routes, path):
    from server.health import LIVENESS_PATH

    assert {"/health", "/metrics", LIVENESS_PATH} <= routes, routes  # the assembly above works
    for deployment in _servers(rendered[path]):
        container = _container(deployment)
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        for kind, probe in probes.items():
            assert probe["path"] in routes, f"{kind} {probe['path']} is not a route of the server"
            assert probe["path"] in OPEN_PATHS, f"{kind} {probe['path']} would need the API key"
            assert probe["port"] in {p["name"] for p in container["ports"]}
        assert probes["readinessProbe"]["path"] == "/health"
        # Liveness must not restart a draining server or one whose adapter file vanished.
        assert probes["livenessProbe"]["path"] == LIVENESS_PATH != probes["readinessProbe"]["path"]


def _serve_args(serve_parser, container: dict):
    """(fairsteer serve namespace, vLLM namespace) of a container, as the image would start it."""
    argv = _entrypoint()[1:] + container["args"]
    assert argv[0] == "serve"
    args = serve_parser.parse_args(argv)
    engine = list(args.engine_options)
    engine = engine[1:] if engine[:1] == ["--"] else engine
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    vllm_args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", args.model, *engine])
    return args, vllm_args


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_container_args_parse_with_fairsteer_serve_and_match_the_pod(rendered, serve_parser, path):
    for deployment in _servers(rendered[path]):
        container = _container(deployment)
        args, vllm_args = _serve_args(serve_parser, container)
        assert args.host == "0.0.0.0" and args.port in {p["containerPort"] for p in container["ports"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert args.model.startswith("/models/") and mounts["/models"]["readOnly"]
        for spec in args.adapter:
            assert spec.partition("=")[2].startswith("/adapters/") and mounts["/adapters"]["readOnly"]
        spec = deployment["spec"]["template"]["spec"]
        pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert container["lifecycle"]["preStop"]["exec"]["command"][:-1] == ["sleep"]
        assert spec["terminationGracePeriodSeconds"] > args.drain_timeout + pause, \
            "the kubelet would kill the drain: grace period must exceed --drain-timeout plus the preStop pause"
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert gpus == vllm_args.tensor_parallel_size * vllm_args.pipeline_parallel_size, \
            f"{gpus} GPUs for tensor parallel size {vllm_args.tensor_parallel_size}"


def test_tensor_parallel_overlay_splits_over_several_gpus(rendered, serve_parser):
    (deployment,) = _servers(rendered["overlays/tensor-parallel"])
    _, vllm_args = _serve_args(serve_parser, _container(deployment))
    assert vllm_args.tensor_parallel_size > 1


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_images_are_tagged_with_the_package_version(rendered, path):
    for deployment in _objects(rendered[path], "Deployment"):
        image = _container(deployment)["image"]
        assert image in {f"fairsteer:{VERSION}", f"fairsteer-router:{VERSION}"}, image


def _declared_volumes(dockerfile: Path) -> list[str]:
    return json.loads(re.search(r"^VOLUME (\[.*\])$", dockerfile.read_text(), re.MULTILINE).group(1))


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_pods_run_as_the_image_user_with_a_read_only_root_and_its_volumes(rendered, path):
    user = re.findall(r"^USER (\d+):(\d+)$", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)[-1]
    for deployment in _servers(rendered[path]):
        spec = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert (str(spec["securityContext"]["runAsUser"]), str(spec["securityContext"]["runAsGroup"])) == user
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        for volume in _declared_volumes(DOCKER / "Dockerfile"):
            assert volume in mounts, f"the image declares {volume}; the pod must mount it"
        assert {"/tmp", "/dev/shm"} <= mounts
        volumes = {v["name"]: v for v in spec["volumes"]}
        shm = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert volumes[shm]["emptyDir"]["medium"] == "Memory"
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_services_budgets_and_monitors_select_the_server_pods(rendered, path):
    docs = rendered[path]
    servers = _servers(docs)
    for service in _objects(docs, "Service"):
        chosen = [d for d in _objects(docs, "Deployment") if _selects(service["spec"]["selector"], d)]
        assert chosen, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in {p["name"] for d in chosen for p in _container(d)["ports"]}
    for budget in _objects(docs, "PodDisruptionBudget"):
        assert any(_selects(budget["spec"]["selector"]["matchLabels"], d) for d in _objects(docs, "Deployment"))
    (monitor,) = _objects(docs, "PodMonitor")
    assert all(_selects(monitor["spec"]["selector"]["matchLabels"], d) for d in servers)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["path"] in app_routes()
    assert all(endpoint["port"] in {p["name"] for p in _container(d)["ports"]} for d in servers)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_prometheus_rule_carries_the_rules_file(rendered, path):
    (rule,) = _objects(rendered[path], "PrometheusRule")
    source = yaml.safe_load((DOCKER / "rules" / "fairsteer.rules.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"], "stale: run .venv/bin/python deploy/k8s/sync_rules.py"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_dashboard_config_map_is_the_committed_dashboard(rendered, path):
    (config,) = [c for c in _objects(rendered[path], "ConfigMap") if "fairsteer.json" in c.get("data", {})]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    committed = (DOCKER / "grafana" / "dashboards" / "fairsteer.json").read_text()
    assert config["data"]["fairsteer.json"] == committed
    json.loads(config["data"]["fairsteer.json"])


def _vllm_metric_names() -> set[str]:
    loggers = Path(importlib.util.find_spec("vllm").origin).parent / "v1" / "metrics" / "loggers.py"
    return set(re.findall(r'name="(vllm:[a-z0-9_:]+)"', loggers.read_text()))


def test_autoscaler_scales_the_server_on_vllm_waiting_requests(rendered, tmp_path):
    from observability.dashboards import prometheus_tool

    docs = rendered["overlays/autoscaling"]
    (scaled,) = _objects(docs, "ScaledObject")
    (deployment,) = _servers(docs)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "prometheus" and meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) > 0 and meta["metricType"] == "AverageValue"
    assert "vllm:num_requests_waiting" in _vllm_metric_names()
    assert re.findall(r"vllm:[a-z_:]+", meta["query"]) == ["vllm:num_requests_waiting"]
    (monitor,) = _objects(docs, "PodMonitor")
    job = f'{monitor["metadata"]["namespace"]}/{monitor["metadata"]["name"]}'
    assert f'job="{job}"' in meta["query"], "the query must select the series the PodMonitor scrapes"
    rules = tmp_path / "query.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": [{"record": "keda:q", "expr": meta["query"]}]}]}))
    check = subprocess.run([prometheus_tool("promtool"), "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_router_sends_to_every_replica_service(rendered):
    from vllm_router.launch_router import parse_router_args

    docs = rendered["overlays/router"]
    servers = _servers(docs)
    assert len(servers) >= 2
    (router,) = [d for d in _objects(docs, "Deployment") if d not in servers]
    router_args = parse_router_args(_container(router)["args"])
    services = {s["metadata"]["name"]: s for s in _objects(docs, "Service")}
    backends = []
    for url in router_args.worker_urls:
        host, port = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url).groups()
        service = services[host]
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        (backend,) = [d for d in servers if _selects(service["spec"]["selector"], d)]
        backends.append(backend["metadata"]["name"])
    assert sorted(backends) == sorted(d["metadata"]["name"] for d in servers), "one backend per replica"
    assert router_args.health_check_endpoint == _container(servers[0])["readinessProbe"]["httpGet"]["path"]
    assert router_args.host == "0.0.0.0"
    assert router_args.port in {p["containerPort"] for p in _container(router)["ports"]}
