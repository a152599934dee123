"""Triton kernels against the reference, on fresh random inputs (interpreter on CPU, real kernels on GPU).

Tolerance model: |triton - ref| <= ULPS · eps(dtype) · m, where m = |h'| + |s|·(|a|·|h'| + |b|) is the
magnitude of the terms summed for that element (h' = the normed value for the fused op). This scales with
what was actually rounded, so rows that cancel to ~0 are not held to an impossible relative bound.
"""

import os

import pytest
import torch

from steering_kernels import dispatch
from steering_kernels.reference import rms_norm_ref, rms_norm_steer_ref, steer_ref

if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    pytest.skip("runs on a GPU or under TRITON_INTERPRET=1 (as `make test` runs it)", allow_module_level=True)
assert dispatch.HAS_TRITON, "triton (a pinned dependency) fails to import"

from steering_kernels import triton_kernels as tk  # after the interpreter check

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}   # unit roundoff × 2
# ULPS per (op, dtype). Origin of each value:
#  steer fp32/fp16: 0. Same fp32 ops in the same order (FP contraction off), round-to-nearest cast.
#  steer bf16: 1. The interpreter casts fp32 -> bf16 by truncation (triton/runtime/interpreter.py,
#      _convert_float), torch rounds to nearest: at most 1 ulp apart. On GPU (cvt.rn) it is 0.
#  fused, all dtypes: 4. The row's sum of squares is reduced in another order than torch's and rsqrt may
#      differ by an ulp; that shifts the normed value by ~1 ulp, then up to three roundings follow (normed,
#      × weight, steer). Measured worst: 2.99 (fp32, 3 seeds × 3 shapes), 2.94 (bf16), 1.51 (fp16).
ULPS = {"steer": {torch.float32: 0, torch.float16: 0, torch.bfloat16: 1},
        "fused": {torch.float32: 4, torch.float16: 4, torch.bfloat16: 4}}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Token counts 1, odd, large; hidden sizes of real models (SmolLM2 576, Qwen2.5-0.5B 896) and a small odd one.
# 1024 tokens only at 576 wide, to keep the interpreter's time bounded.
SHAPES = [(1, 576), (7, 896), (83, 37), (83, 576), (1024, 576)]
SEEDS = [0, 1, 2]


def _inputs(T, D, dtype, K=3, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + T * 7 + D)
    h = (torch.randn(T, D, generator=g) * 3).to(dtype)
    a = torch.randn(K, D, generator=g) * 0.2
    b = torch.randn(K, D, generator=g) * 0.2
    strength = torch.rand(T, generator=g) * 2.5 - 0.5
    strength[1::3] = 0                                              # mixed strengths including 0
    index = torch.randint(0, K + 1, (T,), generator=g, dtype=torch.int32)   # several adapters and 0
    index[0] = 1  # row 0 always steered, so the one-token (decode) shape is checked steered
    weight = (1 + 0.3 * torch.randn(D, generator=g)).to(dtype)
    residual = torch.randn(T, D, generator=g).to(dtype)
    return [t.to(DEVICE) for t in (h, a, b, strength, index, weight, residual)]


def _assert_close(out, ref, h_steered, a, b, strength, index, ulps, what):
    row = (index.long() - 1).clamp(min=0) if index is not None else torch.zeros_like(strength, dtype=torch.long)
    hs = h_steered.float().abs()
    magnitude = hs + strength.abs()[:, None] * (a[row].abs() * hs + b[row].abs())
    err = (out.float() - ref.float()).abs()
    bound = ulps * EPS[out.dtype] * magnitude
    worst = (err - bound).max().item() if err.numel() else 0.0
    assert worst <= 0, f"{what}: {(err > bound).sum().item()} elements beyond {ulps} ulps of the term magnitude"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,D", SHAPES)
def test_steer_kernel_matches_reference(T, D, dtype, seed):
    h, a, b, s, index, *_ = _inputs(T, D, dtype, seed=seed)
    for idx in (index, None):
        out, ref = tk.steer(h, a, b, s, idx), steer_ref(h, a, b, s, idx)
        _assert_close(out, ref, h, a, b, s, idx, ULPS["steer"][dtype], f"steer index={idx is not None}")
        untouched = (s == 0) if idx is None else (s == 0) | (idx <= 0)
        assert torch.equal(out[untouched], h[untouched]), "strength 0 / index 0 rows must not change a bit"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,D", SHAPES)
def test_fused_kernel_matches_reference(T, D, dtype, seed):
    x, a, b, s, index, weight, residual = _inputs(T, D, dtype, seed=seed)
    out = tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index)
    ref = rms_norm_steer_ref(x, weight, 1e-6, a, b, s, index)
    _assert_close(out, ref, rms_norm_ref(x, weight, 1e-6), a, b, s, index, ULPS["fused"][dtype], "fused")
    out_r, updated = tk.rms_norm_steer(x, weight, 1e-6, a, b, s, None, residual=residual)
    ref_r, ref_updated = rms_norm_steer_ref(x, weight, 1e-6, a, b, s, None, residual=residual)
    _assert_close(updated, ref_updated, ref_updated, a, b, torch.zeros_like(s), None, ULPS["steer"][dtype],
                  "updated residual (one rounding of x + residual)")
    _assert_close(out_r, ref_r, rms_norm_ref(ref_updated, weight, 1e-6), a, b, s, None, ULPS["fused"][dtype],
                  "fused with residual")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_strength_zero_equals_the_plain_norm_bit_for_bit(dtype):
    x, a, b, s, index, weight, residual = _inputs(83, 576, dtype)
    plain = tk.rms_norm_steer(x, weight, 1e-6, None, None, None)                  # same kernel, no steering
    steered = tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index)
    untouched = (s == 0) | (index <= 0)
    assert torch.equal(steered[untouched], plain[untouched]), "strength 0 must equal the plain norm exactly"
    assert not torch.equal(steered[~untouched], plain[~untouched])
    plain_r, upd_plain = tk.rms_norm_steer(x, weight, 1e-6, None, None, None, residual=residual)
    steered_r, upd = tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual)
    assert torch.equal(upd, upd_plain)
    assert torch.equal(steered_r[untouched], plain_r[untouched])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # numpy, on the unused lane
@pytest.mark.parametrize("dtype", DTYPES)
def test_untouched_rows_are_selected_not_scaled_by_zero(dtype):
    h, a, b, s, index, *_ = _inputs(83, 576, dtype)
    s[0], h[0, :3] = 0.0, float("inf")            # strength 0: h + 0·(a·inf + b) would be NaN
    index[1], h[1, :3] = 0, float("-inf")
    y = tk.steer(h, a, b, s, index)
    assert torch.equal(y[:2], h[:2]), "strength 0 / index 0 rows must be the input bit for bit, inf included"


# fp16 casts round to nearest in the interpreter too, so the kernel's plain norm differs from the reference
# only where the sum order or rsqrt moves a value across a rounding boundary: measured 0.002% of elements.
# Rounding the normed value once after the weight instead of vLLM's way gives 26%. bf16 joins on GPU only
# (the interpreter truncates bf16 casts).
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else []))
def test_plain_norm_rounds_like_the_reference(dtype):
    x, _, _, _, _, weight, _ = _inputs(83, 576, dtype)
    mismatched = (tk.rms_norm_steer(x, weight, 1e-6, None, None, None) != rms_norm_ref(x, weight, 1e-6))
    assert mismatched.float().mean().item() < 0.01, "the norm must round as vLLM does (see reference.py)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_rows_equal_each_row_alone(dtype):
    x, a, b, s, index, weight, residual = _inputs(9, 896, dtype)
    batched = tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual)[0]
    for t in range(9):
        solo = tk.rms_norm_steer(x[t:t + 1], weight, 1e-6, a, b, s[t:t + 1], index[t:t + 1],
                                 residual=residual[t:t + 1])[0]
        assert torch.equal(batched[t:t + 1], solo), f"token {t}: batched output differs from its solo run"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_wider_than_one_tile_loop_over_chunks(dtype):
    # Hidden sizes above MAX_BLOCK_D take the two-pass chunked path; force it on a small row.
    x, a, b, s, index, weight, residual = _inputs(13, 200, dtype)
    out, upd = tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual, max_block_d=64)
    ref, ref_upd = rms_norm_steer_ref(x, weight, 1e-6, a, b, s, index, residual=residual)
    assert torch.equal(upd, tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual)[1])
    _assert_close(out, ref, rms_norm_ref(ref_upd, weight, 1e-6), a, b, s, index, ULPS["fused"][dtype], "chunked")
    y = tk.steer(x, a, b, s, index, max_block_d=64)
    _assert_close(y, steer_ref(x, a, b, s, index), x, a, b, s, index, ULPS["steer"][dtype], "chunked steer")


def test_out_of_range_index_leaves_the_row_untouched_and_reads_no_other_memory():
    h, a, b, s, index, *_ = _inputs(6, 37, torch.float32)
    s[:] = 1.0
    index = torch.tensor([1, 4, 99, -1, 2, 3], dtype=torch.int32, device=DEVICE)   # K = 3
    y = tk.steer(h, a, b, s, index)
    assert torch.equal(y[1:4], h[1:4])
    assert torch.equal(y[[0, 4, 5]], steer_ref(h, a, b, s, index.clamp(max=3))[[0, 4, 5]])


def test_dispatch_forced_to_triton_runs_the_kernels():
    x, a, b, s, index, weight, residual = _inputs(7, 896, torch.bfloat16)
    with dispatch.use_backend("triton"):
        y, upd = dispatch.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual)
        z = dispatch.steer(x, a, b, s, index)
    assert torch.equal(y, tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual)[0])
    assert torch.equal(upd, tk.rms_norm_steer(x, weight, 1e-6, a, b, s, index, residual=residual)[1])
    assert torch.equal(z, tk.steer(x, a, b, s, index))
