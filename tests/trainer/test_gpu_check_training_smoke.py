"""bench/gpu_check.sh's training smoke (part d, bench/train_throughput.py --smoke) runs on the CPU, so the
one GPU run is not dead code: tiny random model in bf16, stop + resume = uninterrupted, the adapter's
format, the memory estimate against the measured peak."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_training_smoke_passes_on_the_cpu_and_appends_its_summary(tmp_path):
    spec = importlib.util.spec_from_file_location("fairsteer_train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--cpu-smoke", "--out", str(tmp_path)]) == 0
    checks = json.loads((tmp_path / "train_check.json").read_text())["checks"]
    assert [c["pass"] for c in checks] == [True] * 3, checks
    assert checks[0]["bit_identical"], "on the CPU a resumed run is the uninterrupted one, bit for bit"
    assert "(d) training smoke" in (tmp_path / "summary.md").read_text()
