"""`fairsteer serve -- --distributed-executor-backend ray --tensor-parallel-size 2` against a local Ray
cluster of two nodes (a head and a second node on 127.0.0.1, one CPU each, started here).

vLLM 0.32's CPU platform declares no Ray device (`CpuPlatform.ray_device_key` is empty), so its Ray
executor refuses to start on CPU: "current platform cpu does not support ray." (vllm/v1/executor/
ray_utils.py, `initialize_ray_cluster`). The test asserts that documented failure, so it notices when a
vLLM release adds Ray on CPU: the server must connect to the cluster, fail with exactly that error,
say so through fairsteer's start-up error, and leave nothing running (no server process, no Ray actor,
both nodes alive). docs/distributed.md has the GPU recipe (Ray on two GPU nodes, KubeRay), not run here.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from distributed.helpers import ENGINE, PINNED, adapter_table
from server_process import ServerProcess, fairsteer_argv, free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

RAY_ON_CPU_ERROR = "current platform cpu does not support ray"
# Ray rewrites 127.0.0.1 in an address to the machine's outward IP (services.resolve_ip_for_localhost)
# unless "Ray clusters" are off for this host, when it keeps the loopback address: the nodes listen on
# 127.0.0.1 only, so every process here (this one, the server's engine) must keep it.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def ray_cluster():
    ray_utils = pytest.importorskip("ray.cluster_utils", reason="ray is in the dev extra (pip install -e .[dev])")
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = ray_utils.Cluster(initialize_head=True, connect=False, head_node_args=dict(node))
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def alive_nodes(cluster) -> list[dict]:
    """The cluster's live nodes, asked by a fresh driver process (Ray reads LOOPBACK_ONLY at import)."""
    script = ("import json, ray, sys\n"
              "ray.init(address=sys.argv[1], logging_level='ERROR')\n"
              "print(json.dumps([n for n in ray.nodes() if n['Alive']]))\n")
    out = subprocess.run([sys.executable, "-c", script, cluster.address], capture_output=True, text=True,
                         timeout=180, env={**os.environ, **LOOPBACK_ONLY}, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_two_node_ray_cluster_is_up(ray_cluster):
    nodes = alive_nodes(ray_cluster)
    assert len(nodes) == 2 and all(n["Resources"].get("CPU") == 1 for n in nodes), nodes
    assert {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}


def test_ray_executor_fails_on_the_cpu_build_as_documented(ray_cluster, dist_model, dist_adapters, tmp_path):
    port = free_port()
    argv = fairsteer_argv(dist_model, adapter_table(dist_adapters), port,
                          engine_options=ENGINE + ("--distributed-executor-backend", "ray",
                                                   "--tensor-parallel-size", "2"))
    server = ServerProcess(argv, port, tmp_path / "ray-server.log",
                           env={**PINNED, **LOOPBACK_ONLY, "RAY_ADDRESS": ray_cluster.address}).start()
    try:
        status = server.proc.wait(600)
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    print(f"fairsteer serve with the Ray executor exited with status {status}:\n{server.log_tail(6)}")
    if status == 0 or RAY_ON_CPU_ERROR not in log:
        pytest.fail(f"the Ray executor on CPU did not fail as documented (status {status}); if it runs now, "
                    f"replace this test by a served mixed-strength check. Log tail:\n{server.log_tail(40)}")
    assert "the vLLM engine failed to start" in log, "fairsteer must report the engine's failure plainly"
    assert "Connecting to existing Ray cluster" in log or ray_cluster.address in log, \
        "the engine must have reached the test's Ray cluster before failing"
    time.sleep(2)
    nodes = alive_nodes(ray_cluster)
    assert len(nodes) == 2, "the failed start must not take a Ray node down"
