"""The reference semantics (steering_kernels/reference.py), checked in float64 against the formula itself."""

import pytest
import torch

from steering_kernels.reference import rms_norm_ref, rms_norm_steer_ref, steer_ref


def _inputs(T=11, D=33, K=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, D, generator=g, dtype=torch.float64).to(dtype)
    a = torch.randn(K, D, generator=g, dtype=torch.float64)
    b = torch.randn(K, D, generator=g, dtype=torch.float64)
    strength = torch.rand(T, generator=g, dtype=torch.float64) * 3 - 1
    index = torch.randint(1, K + 1, (T,), generator=g, dtype=torch.int32)
    return h, a, b, strength, index


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_steer_strength_zero_is_bit_identical(dtype):
    h, a, b, strength, index = _inputs(dtype=dtype)
    h[0, 0] = float("inf")                       # 0 · inf would be NaN: rows must be selected, not scaled
    zero = torch.zeros_like(strength)
    assert torch.equal(steer_ref(h, a.float(), b.float(), zero, index), h), "strength 0 must not change a bit"
    assert torch.equal(steer_ref(h, a.float(), b.float(), zero), h), "strength 0 must not change a bit"


def test_steer_index_zero_and_negative_leave_rows_untouched():
    h, a, b, strength, index = _inputs()
    index[::2] = 0
    index[1] = -1                                # vLLM's LoRA convention for "none" must not steer either
    y = steer_ref(h, a, b, strength, index)
    untouched = index <= 0
    assert torch.equal(y[untouched], h[untouched])
    assert not torch.equal(y[~untouched], h[~untouched])


def test_steer_matches_the_formula_token_by_token():
    h, a, b, strength, index = _inputs()
    y = steer_ref(h, a, b, strength, index)
    for t in range(h.shape[0]):
        k = int(index[t]) - 1
        expected = h[t] + strength[t] * (a[k] * h[t] + b[k])
        torch.testing.assert_close(y[t], expected, rtol=0, atol=0)   # float64, same operations


@pytest.mark.parametrize("omega", [0.3, -0.7, 2.5])
def test_steer_is_linear_in_strength(omega):
    h, a, b, _, index = _inputs()
    ones = torch.ones(h.shape[0], dtype=torch.float64)
    delta_1 = steer_ref(h, a, b, ones, index) - h
    delta_w = steer_ref(h, a, b, ones * omega, index) - h
    # float64 rounding of a handful of operations on O(1) values: 1e-12 is far above it, far below a bug.
    torch.testing.assert_close(delta_w, omega * delta_1, rtol=1e-12, atol=1e-12)


def test_single_adapter_form_is_index_one_everywhere():
    h, a, b, strength, _ = _inputs()
    ones = torch.ones(h.shape[0], dtype=torch.int32)
    assert torch.equal(steer_ref(h, a, b, strength), steer_ref(h, a, b, strength, ones))


def test_several_adapters_in_one_batch_equal_each_alone():
    h, a, b, strength, index = _inputs(T=12, K=4)
    index[:] = torch.arange(12) % 5              # adapters 0 (none), 1, 2, 3, 4 interleaved
    y = steer_ref(h, a, b, strength, index)
    for t in range(12):
        solo = steer_ref(h[t:t + 1], a, b, strength[t:t + 1], index[t:t + 1])
        assert torch.equal(y[t:t + 1], solo)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fused_is_rms_norm_then_steer(dtype):
    x, a, b, strength, index = _inputs(dtype=dtype)
    a, b = a.float(), b.float()
    weight = torch.linspace(0.5, 1.5, x.shape[1], dtype=torch.float64).to(dtype)
    residual = torch.randn_like(x)
    y = rms_norm_steer_ref(x, weight, 1e-6, a, b, strength, index)
    assert torch.equal(y, steer_ref(rms_norm_ref(x, weight, 1e-6), a, b, strength, index))
    y_r, updated = rms_norm_steer_ref(x, weight, 1e-6, a, b, strength, index, residual=residual)
    assert torch.equal(updated, (x.double() + residual.double()).to(dtype)), "residual must be x + residual"
    assert torch.equal(y_r, steer_ref(rms_norm_ref(updated, weight, 1e-6), a, b, strength, index))
    plain = rms_norm_steer_ref(x, weight, 1e-6, a, b, torch.zeros_like(strength), index)
    assert torch.equal(plain, rms_norm_ref(x, weight, 1e-6)), "strength 0 must equal the plain norm exactly"


def test_rms_norm_ref_is_the_textbook_formula_in_float64():
    x, *_ = _inputs()
    weight = torch.linspace(0.5, 1.5, x.shape[1], dtype=torch.float64)
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * weight
    torch.testing.assert_close(rms_norm_ref(x, weight, 1e-5), expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_ref_rounds_exactly_like_vllm(dtype):
    # Strength 0 on GPU must be the model's own norm: vLLM rounds the normed value to the weight's dtype
    # before multiplying by the weight (rounding once after the weight differs in ~26% of bf16 elements).
    from vllm.ir.ops import layernorm
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 576, generator=g).to(dtype)
    weight = (1 + 0.3 * torch.randn(576, generator=g)).to(dtype)
    vllm_native = layernorm.rms_norm.impls["native"].impl_fn
    assert torch.equal(rms_norm_ref(x, weight, 1e-6), vllm_native(x, weight, 1e-6))


def test_reference_is_differentiable_in_a_and_b():
    h, a, b, strength, index = _inputs(T=4, D=5)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a_, b_: steer_ref(h, a_, b_, strength, index), (a, b))
