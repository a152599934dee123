"""An adapter is the same artefact whatever dtype trained it, and evaluates the same in bf16 and fp32."""

import json

import pytest
import torch
from safetensors import safe_open
from tiny_models import save_tiny_model

from adapters import io
from cli.main import main

# Per-occupation bias, accuracies and rates are means of probabilities: bf16 rounds the tiny model's
# logits by about 2^-8 relative, which moved them by at most 1e-4 here; 0.01 leaves a wide margin and is
# still far below the differences an adapter makes. KL values are small (1e-2 nats): 10% relative.
PROB_TOL = 0.01
KL_REL_TOL = 0.1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model, and one adapter trained in fp32 and one in bf16 with the same settings."""
    root = tmp_path_factory.mktemp("dtypes")
    model_dir = save_tiny_model(root / "model")
    files = {}
    for dtype in ("float32", "bfloat16"):
        files[dtype] = root / f"{dtype}.safetensors"
        assert main(["train", "--model", str(model_dir), "--out", str(files[dtype]), "--task", "continuation",
                     "--steps", "3", "--n-train", "40", "--occupations-per-step", "4", "--lr", "0.05",
                     "--device", "cpu", "--dtype", dtype]) == 0
    return model_dir, files


def test_the_adapter_file_is_the_same_format_whatever_dtype_trained_it(trained):
    _, files = trained
    layouts = []
    for dtype, path in files.items():
        spec = io.load(path)
        assert spec.a.dtype == spec.b.dtype == torch.float32 and spec.a.device.type == "cpu"
        assert (spec.meta.training["dtype"], spec.meta.training["device"]) == (dtype, "cpu"), \
            "the training settings record the hardware that trained the adapter"
        with safe_open(str(path), framework="pt") as f:
            layouts.append({k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()})  # noqa: SIM118
    assert layouts[0] == layouts[1], "same tensors, dtypes and shapes"
    trained_fp32, trained_bf16 = (io.load(p) for p in files.values())
    assert set(trained_fp32.meta.training) == set(trained_bf16.meta.training)
    # bf16 rounds the model, not the adapter: the two runs' adapters are close (Adam's sign-like steps can
    # flip an element whose gradient is near 0, so compare norms: measured 0.08 here).
    change = (trained_fp32.b - trained_bf16.b).norm() / trained_fp32.b.norm()
    assert change < 0.2, f"bf16 and fp32 training differ by {change:.2f} of the adapter's norm"


def test_a_bf16_trained_adapter_evaluates_in_bf16_within_tolerance_of_fp32(trained, tmp_path):
    model_dir, files = trained
    rows = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["eval", "--model", str(model_dir), "--adapter", str(files["bfloat16"]), "--strengths", "0,1",
                     "--n-eval", "16", "--no-prompting", "--dtype", dtype, "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        rows[dtype] = report["methods"]["dso"][-1]
        assert report["settings"]["dtype"] == dtype
    fp32, bf16 = rows["float32"], rows["bfloat16"]
    for key in ("per_occupation_bias", "unambiguous_accuracy", "other_rate"):
        assert abs(fp32[key] - bf16[key]) <= PROB_TOL, (key, fp32[key], bf16[key])
    for key in ("kl_to_base", "generic_kl"):
        assert bf16[key] == pytest.approx(fp32[key], rel=KL_REL_TOL, abs=1e-4), key
