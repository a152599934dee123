"""deploy/k8s/overlays/multi-node, checked offline (no cluster here; the LeaderWorkerSet CRD is not in the
Kubernetes schemas): it renders; its core kinds validate strictly; the LeaderWorkerSet has the shape the
LWS controller reads; the leader's command serves with arguments the real `fairsteer serve` and vLLM
parsers accept, over the Ray executor, with as many GPUs in the group as tensor x pipeline ranks; the
worker joins the leader's Ray head; the Service sends traffic to leaders only."""

import shlex
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

OVERLAY = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "overlays" / "multi-node"
CRDS = {"LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1", "PodMonitor": "monitoring.coreos.com/v1",
        "PrometheusRule": "monitoring.coreos.com/v1"}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is missing: install kubectl 1.32"
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def serve_command(container: dict) -> tuple[list[str], list[str]]:
    """(the lines before `exec fairsteer serve`, the serve argv) of the leader's shell script."""
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0].replace("\\\n", " ")
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    assert lines[-1].startswith("exec fairsteer serve "), lines[-1]
    return lines[:-1], shlex.split(lines[-1])[2:]


def test_core_kinds_validate_and_only_known_crds_remain(docs):
    for doc in docs:
        if doc["kind"] in CRDS:
            assert doc["apiVersion"] == CRDS[doc["kind"]]
            continue
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_the_leader_serves_over_ray_with_every_gpu_of_the_group(docs):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from cli.main import build_parser

    spec = one(docs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    (leader,) = spec["leaderTemplate"]["spec"]["containers"]
    (worker,) = spec["workerTemplate"]["spec"]["containers"]
    before, argv = serve_command(leader)
    args = build_parser().parse_args(argv)
    engine = args.engine_options[1:] if args.engine_options[:1] == ["--"] else args.engine_options
    vllm_args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", args.model, *engine])
    assert vllm_args.distributed_executor_backend == "ray"
    ranks = vllm_args.tensor_parallel_size * vllm_args.pipeline_parallel_size
    gpus = [c["resources"]["limits"]["nvidia.com/gpu"] for c in (leader, worker)]
    assert [c["resources"]["requests"]["nvidia.com/gpu"] for c in (leader, worker)] == gpus
    assert sum(gpus) == ranks and spec["size"] == 2, f"{ranks} ranks on {gpus} GPUs"
    assert any(line.startswith("ray start --head --port=6379") for line in before)
    assert any(f"< {ranks}" in line for line in before), "the leader must wait for every GPU of the group"
    assert "ray start --address=$(LWS_LEADER_ADDRESS):6379" in worker["args"][0] and "--block" in worker["args"][0]
    assert spec["restartPolicy"] == "RecreateGroupOnPodRestart", "a lost worker must restart its whole group"
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {"/models", "/adapters"} <= mounts, "engine workers on the worker pod read the model and adapters"
    for spec_arg in args.adapter:
        assert spec_arg.partition("=")[2].startswith("/adapters/")


def test_the_service_selects_the_leaders_only(docs):
    service = one(docs, "Service")
    labels = one(docs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.pop("leaderworkerset.sigs.k8s.io/role") == "leader"
    assert all(labels.get(k) == v for k, v in selector.items()), (selector, labels)
    (leader,) = one(docs, "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in leader["ports"]}
