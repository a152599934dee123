"""How a steered norm runs on CPU (server/vllm_plugin/models.py `site_op`), and why each mode is exact.

- "fused" (eager, fp32): our CPU add + RMSNorm must give vLLM's own RMSNorm module's bits, or strength 0
  would drift from plain vLLM; checked against the module itself, so a vLLM upgrade that changes its norm fails here.
- "inline" (torch.compile): `steer_ref` compiled by Inductor, alone and fused behind an RMSNorm, on fresh random
  inputs. Tolerance 0: Inductor's CPU code keeps fp contraction off (its default), so the compiled kernel does
  the reference's roundings, and untouched rows come out of torch.where as the norm's own bits.
No engine here: the engine-level checks are tests/server/test_vllm_plugin.py (eager, default "fused") and
tests/server/test_engine_architectures.py (compiled "inline", "separate", forced "fused").
"""

import pytest
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm

from server.vllm_plugin.models import site_op
from steering_kernels import dispatch, plan_rows, rms_norm_steer, unsteered_plan
from steering_kernels.reference import rms_norm_ref, steer_ref

SHAPES = [(1, 576), (7, 896), (83, 37), (32, 576)]   # decode of one, odd sizes, SmolLM2's width
CPU = torch.device("cpu")


def _norm(D, cls=RMSNorm, seed=0):
    with set_current_vllm_config(VllmConfig()):     # vLLM's CustomOp picks its CPU implementation from it
        norm = cls(D, eps=1e-5)
    norm.weight.data = 1 + 0.3 * torch.randn(D, generator=torch.Generator().manual_seed(seed))
    return norm


def _step(T, D, K=2, seed=0):
    g = torch.Generator().manual_seed(seed * 100 + T + D)
    x, residual = torch.randn(T, D, generator=g) * 3, torch.randn(T, D, generator=g)
    a, b = torch.randn(K, D, generator=g) * 0.2, torch.randn(K, D, generator=g) * 0.2
    strength = torch.rand(T, generator=g) * 1.5
    strength[::3] = 0
    index = torch.randint(0, K + 1, (T,), generator=g, dtype=torch.int32)
    return x, residual, a, b, strength, index


@pytest.mark.parametrize("T, D", SHAPES)
def test_cpu_fused_norm_at_strength_zero_gives_vllms_rms_norm_bits(T, D):
    norm = _norm(D)
    x, residual, a, b, strength, index = _step(T, D)
    expected, expected_sum = norm(x.clone(), residual.clone())
    zero = torch.zeros_like(strength)
    with dispatch.use_backend("torch"):
        for plan in (unsteered_plan(T), plan_rows(zero, index)):
            y, updated = rms_norm_steer(x, norm.weight, norm.variance_epsilon, a, b, zero, index,
                                        residual=residual, plan=plan)
            assert torch.equal(updated, expected_sum), "the residual sum must be vLLM's"
            assert torch.equal(y, expected), "strength 0 through the fused op must give vLLM's norm bits"


@pytest.mark.parametrize("T, D", SHAPES)
def test_cpu_fused_norm_steers_its_rows_as_the_reference_and_leaves_the_others_as_vllm(T, D):
    norm = _norm(D, seed=1)
    x, residual, a, b, strength, index = _step(T, D, seed=1)
    normed, _ = norm(x.clone(), residual.clone())
    with dispatch.use_backend("torch"):
        y, _ = rms_norm_steer(x, norm.weight, norm.variance_epsilon, a, b, strength, index, residual=residual,
                              plan=plan_rows(strength, index))
    assert torch.equal(y, steer_ref(normed, a, b, strength, index)), "fused = vLLM's norm, then the reference"


def _inductor(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="inductor", dynamic=True, fullgraph=True)


def test_inline_steering_compiled_by_inductor_gives_the_reference_bits():
    compiled = _inductor(steer_ref)
    for T, D in SHAPES:
        x, _, a, b, strength, index = _step(T, D, K=3, seed=2)
        assert torch.equal(compiled(x, a, b, strength, index), steer_ref(x, a, b, strength, index)), (T, D)


def test_inline_steering_fused_behind_a_norm_keeps_the_norms_bits_where_untouched():
    def norm_then_steer(x, weight, a, b, strength, index):
        normed = rms_norm_ref(x, weight, 1e-5)
        return normed, steer_ref(normed, a, b, strength, index)

    compiled = _inductor(norm_then_steer)
    plain = _inductor(lambda x, weight: rms_norm_ref(x, weight, 1e-5))
    for T, D in SHAPES:
        x, _, a, b, strength, index = _step(T, D, seed=3)
        weight = _norm(D).weight.data
        normed, y = compiled(x, weight, a, b, strength, index)
        untouched = (index == 0) | (strength == 0)
        assert torch.equal(y[untouched], plain(x, weight)[untouched]), "untouched rows must be the plain norm"
        assert torch.equal(y, steer_ref(normed, a, b, strength, index)), "steered rows: the reference's bits"


def test_site_op_follows_device_mode_and_dtype(monkeypatch):
    monkeypatch.delenv("FAIRSTEER_FUSED_NORM", raising=False)
    norm = _norm(64)
    assert site_op(norm, CPU, compiled=False) == "fused"
    assert site_op(norm, CPU, compiled=True) == "inline"
    assert site_op(_norm(64, GemmaRMSNorm), CPU, compiled=False) == "separate", "only vLLM's plain RMSNorm fuses"
    norm.weight.data = norm.weight.data.bfloat16()
    assert site_op(norm, CPU, compiled=False) == "separate", "bf16 casts could round unlike vLLM's norm"
    monkeypatch.setenv("FAIRSTEER_FUSED_NORM", "0")
    assert site_op(_norm(64), CPU, compiled=False) == "separate"
    monkeypatch.setenv("FAIRSTEER_FUSED_NORM", "1")
    assert site_op(_norm(64), CPU, compiled=True) == "fused"
    monkeypatch.setenv("FAIRSTEER_FUSED_NORM", "yes")
    with pytest.raises(ValueError, match="use 1 .* 0 .* or unset"):
        site_op(_norm(64), CPU, compiled=False)
