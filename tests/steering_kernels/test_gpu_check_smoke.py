"""bench/gpu_check.py runs its CPU-compatible parts (so the one GPU run is not dead code)."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the smoke run needs Triton's interpreter (on a GPU, run bench/gpu_check.sh itself)")
def test_gpu_check_cpu_smoke_passes_and_writes_its_summary(tmp_path):
    spec = importlib.util.spec_from_file_location("fairsteer_gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--cpu-smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["correctness"] and all(r["pass"] for r in results["correctness"])
    assert {r["op"] for r in results["correctness"]} == {"steer", "steer single", "fused", "fused+res"}
    assert "(a) correctness" in (tmp_path / "summary.md").read_text()
