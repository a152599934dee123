#!/usr/bin/env bash
# Checks inside the GPU image what can be checked without a GPU (`make image-gpu` runs it after the build):
#   1. the vLLM plugin entry point is registered and vLLM's own plugin loading registers every steered
#      architecture (server.vllm_plugin.check_plugin_active, the server's start-up self-check)
#   2. the steering op and the Triton kernels import (Triton present, CUDA build of torch)
#   3. `fairsteer serve --help` runs
#   4. `fairsteer serve` on a machine without a GPU stops, and what it prints (recorded, not judged:
#      docs/deployment.md quotes it)
# All as the image's user (UID 2000) with a read-only root file system, as Kubernetes runs it.
#   docker/local/check_gpu_image.sh [IMAGE]          (default localhost/fairsteer:VERSION)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE=${1:-localhost/fairsteer:$VERSION}
run() { docker/local/images.sh podman run --rm --read-only "$@"; }

echo "== 1-2. plugin entry point, steered architectures, steering op and Triton kernels"
run --entrypoint python3 "$IMAGE" -c '
from importlib.metadata import entry_points, version
(ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "fairsteer"]
assert ep.value == "server.vllm_plugin:register", ep.value
from server.engine_boundary import SUPPORTED_ARCHITECTURES, steered_architecture
from server.vllm_plugin import check_plugin_active
for arch in SUPPORTED_ARCHITECTURES:
    check_plugin_active(steered_architecture(arch))
import server.vllm_plugin.ops, steering_kernels, steering_kernels.triton_kernels, torch, triton
assert steering_kernels.HAS_TRITON, "triton does not import"
vllm_version = version("vllm")
print(f"ok: entry point {ep.value}; {len(SUPPORTED_ARCHITECTURES)} steered architectures registered; "
      f"vllm {vllm_version}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}; "
      f"steering backend here: {steering_kernels.BACKEND}")
'
echo "== 3. fairsteer serve --help"
run "$IMAGE" --help >/dev/null && echo "ok: fairsteer serve --help"
echo "== 4. fairsteer serve without a GPU"
set +e
out=$(timeout 600 docker/local/images.sh podman run --rm --read-only "$IMAGE" 2>&1)
status=$?
set -e
echo "exit status $status; last lines:"
printf '%s\n' "$out" | tail -15
