"""The public entry points: backend choice, the CPU fast path (bit-identical to the reference), and errors."""

import os
import subprocess
import sys

import pytest
import torch

import steering_kernels
from steering_kernels import cpu_kernel, dispatch, rms_norm_steer, steer
from steering_kernels.reference import rms_norm_steer_ref, steer_ref


def _inputs(T=37, D=96, K=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(T, D, generator=g) * 2).to(dtype)
    a = torch.randn(K, D, generator=g) * 0.3
    b = torch.randn(K, D, generator=g) * 0.3
    strength = torch.rand(T, generator=g) * 2 - 0.5
    index = torch.randint(1, K + 1, (T,), generator=g, dtype=torch.int32)
    weight = (1 + 0.3 * torch.randn(D, generator=g)).to(dtype)
    return h, a, b, strength, index, weight


@pytest.fixture(params=["one-pass op", "torch ops"])
def cpu_path(request, monkeypatch):
    """Run a test on the CPU path's decode-size op where it is built, and on the torch ops it falls back to."""
    if request.param == "torch ops":
        monkeypatch.setattr(cpu_kernel, "load", lambda: None)
    elif cpu_kernel.load() is None:
        pytest.skip("the one-pass CPU op cannot be built here (no compiler?)")
    return request.param


def _index_cases(strength, index):
    """Each case exercises one branch of the CPU path."""
    T = index.shape[0]
    mostly_off = strength.clone()
    mostly_off[3:] = 0                                               # few rows steered: row-subset path
    half_none = index.clone()
    half_none[::2] = 0                                               # many rows, some untouched: where path
    return {
        "single-adapter form": (strength, None),
        "one adapter for all": (strength, torch.full((T,), 2, dtype=torch.int32)),
        "mixed adapters": (strength, index),
        "mixed with index 0": (strength, half_none),
        "few steered": (mostly_off, index),
        "nothing steered": (torch.zeros_like(strength), index),
        "int64 index": (strength, index.long()),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cpu_path_is_bit_identical_to_the_reference(dtype, cpu_path):
    h, a, b, strength, index, weight = _inputs(dtype=dtype)
    residual = torch.randn_like(h)
    with dispatch.use_backend("torch"):
        for name, (s, idx) in _index_cases(strength, index).items():
            assert torch.equal(steer(h, a, b, s, idx), steer_ref(h, a, b, s, idx)), name
            assert torch.equal(rms_norm_steer(h, weight, 1e-5, a, b, s, idx),
                               rms_norm_steer_ref(h, weight, 1e-5, a, b, s, idx)), name
            y, upd = rms_norm_steer(h, weight, 1e-5, a, b, s, idx, residual=residual)
            y_ref, upd_ref = rms_norm_steer_ref(h, weight, 1e-5, a, b, s, idx, residual=residual)
            assert torch.equal(y, y_ref) and torch.equal(upd, upd_ref), name


def test_cpu_path_with_fp32_weight_on_bf16_activations():
    h, a, b, strength, index, weight = _inputs(dtype=torch.bfloat16)
    with dispatch.use_backend("torch"):
        assert torch.equal(rms_norm_steer(h, weight.float(), 1e-5, a, b, strength, index),
                           rms_norm_steer_ref(h, weight.float(), 1e-5, a, b, strength, index))


def test_strength_zero_returns_the_input_bits_in_a_new_tensor():
    h, a, b, strength, index, _ = _inputs()
    h[0, 0] = float("inf")
    y = steer(h, a, b, torch.zeros_like(strength), index)
    assert torch.equal(y, h), "strength 0 must not change a single bit"
    assert y.data_ptr() != h.data_ptr(), "outputs must never alias the input (custom ops forbid it)"


def test_default_backend_is_torch_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert steering_kernels.BACKEND == "torch"


def test_use_backend_restores_the_previous_choice():
    before = dict(dispatch._state)
    with dispatch.use_backend("torch"):
        assert dispatch._state["backend"] == "torch"
    assert dispatch._state == before


def test_unknown_backend_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="torch.*triton"), dispatch.use_backend("cuda"):
        pass


def test_env_override_is_read_at_import():
    env = dict(os.environ, FAIRSTEER_KERNEL="bogus")
    run = subprocess.run([sys.executable, "-c", "import steering_kernels"], env=env, capture_output=True,
                         text=True, check=False, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert run.returncode != 0 and "FAIRSTEER_KERNEL='bogus'" in run.stderr


def test_triton_forced_on_cpu_without_the_interpreter_says_how_to_fix(monkeypatch):
    h, a, b, strength, index, _ = _inputs()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with dispatch.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        steer(h, a, b, strength, index)


@pytest.mark.parametrize("bad, message", [
    (lambda h, a, b, s, i: (h[None], a, b, s, i), "reshape"),
    (lambda h, a, b, s, i: (h, a[:, :5], b[:, :5], s, i), "hidden=96"),
    (lambda h, a, b, s, i: (h, a, b, s[:3], i), "one value per token"),
    (lambda h, a, b, s, i: (h, a, b, s, i.float()), "integer tensor"),
    (lambda h, a, b, s, i: (h, a, b, s, i * 0 + 9), "out of range"),
])
def test_bad_arguments_are_refused_with_a_clear_message(bad, message):
    args = bad(*_inputs()[:5])
    with dispatch.use_backend("torch"), pytest.raises(ValueError, match=message):
        steer(*args)


def test_fused_arguments_are_checked():
    h, a, b, strength, index, weight = _inputs()
    with pytest.raises(ValueError, match="norm weight"):
        rms_norm_steer(h, weight[:4], 1e-5, a, b, strength, index)
    with pytest.raises(ValueError, match="residual must match"):
        rms_norm_steer(h, weight, 1e-5, a, b, strength, index, residual=h.double())


def test_a_row_plan_shared_by_several_sites_gives_the_reference_bits(cpu_path):
    h, _, _, strength, index, weight = _inputs()
    for name, (s, i) in _index_cases(strength, index).items():
        plan = dispatch.plan_rows(s, i)
        for seed in range(3):  # three sites of one step: other tables, other activations, the same plan
            h_site, a_site, b_site, *_ = _inputs(seed=seed + 1)
            expected = steer_ref(h_site, a_site, b_site, s, i)
            assert torch.equal(steer(h_site, a_site, b_site, s, i, plan=plan), expected), name
            y, _ = rms_norm_steer(h_site, weight, 1e-6, a_site, b_site, s, i, residual=h, plan=plan)
            y_ref, _ = rms_norm_steer_ref(h_site, weight, 1e-6, a_site, b_site, s, i, residual=h)
            assert torch.equal(y, y_ref), name


def test_a_plan_for_another_step_is_refused():
    h, a, b, strength, index, _ = _inputs(T=37)
    plan = dispatch.plan_rows(strength[:20], index[:20])
    with pytest.raises(ValueError, match="row plan covers 20 tokens"):
        steer(h, a, b, strength, index, plan=plan)


@pytest.mark.parametrize("seed", range(4))
def test_cpu_path_at_real_width_matches_the_reference_and_leaves_tables_untouched(seed, cpu_path):
    # SmolLM2's hidden size and a decode batch; the gathered rows are computed in place, never the tables.
    h, a, b, strength, index, _ = _inputs(T=32, D=576, K=2, seed=seed + 100)
    strength[::4] = 0
    a_before, b_before = a.clone(), b.clone()
    for s, idx in _index_cases(strength, index).values():
        assert torch.equal(steer(h, a, b, s, idx, plan=dispatch.plan_rows(s, idx)), steer_ref(h, a, b, s, idx))
    assert torch.equal(a, a_before) and torch.equal(b, b_before), "steering must never write the adapter tables"


def test_untouched_rows_of_a_mostly_steered_batch_keep_every_bit_even_inf_nan_and_negative_zero(cpu_path):
    # More than half the rows steered: the CPU path computes all rows and fills the untouched ones' update
    # with -0.0 before adding h, which must keep -0.0, ±inf and NaN rows exactly (torch.equal misses -0 vs +0).
    h, a, b, strength, index, _ = _inputs(T=16, D=8)
    strength[:] = 0.5
    strength[[1, 5]] = 0
    index[9] = 0
    h[1] = torch.tensor([-0.0, float("inf"), -float("inf"), float("nan"), 0.0, -1.0, 3.0, -0.0])
    h[9, :2] = -0.0
    plan = dispatch.plan_rows(strength, index)
    assert plan.untouched is not None, "this case must take the compute-all-then-keep path"
    with dispatch.use_backend("torch"):
        y = steer(h, a, b, strength, index, plan=plan)
    for row in (1, 5, 9):
        assert torch.equal(y[row].view(torch.int32), h[row].view(torch.int32)), f"row {row} must keep its bits"
    steered = torch.ones(16, dtype=torch.bool)
    steered[[1, 5, 9]] = False
    assert torch.equal(y[steered], steer_ref(h, a, b, strength, index)[steered])


@pytest.mark.parametrize("T", [dispatch.COMPILED_MIN_TOKENS, 800])
def test_large_steps_take_the_compiled_reference_and_keep_its_bits(T):
    # Prefill-sized steps run steer_ref compiled by Inductor; a request must get the same bits whether its rows
    # come in a large batch (compiled) or alone (eager ops), so both must equal the reference exactly.
    h, a, b, strength, index, _ = _inputs(T=T, D=576, K=2, seed=7)
    strength[::4] = 0
    index[::7] = 0
    h[0] = -0.0
    h[4, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    with dispatch.use_backend("torch"):
        y = steer(h, a, b, strength, index, plan=dispatch.plan_rows(strength, index))
        alone = [steer(h[t:t + 1], a, b, strength[t:t + 1], index[t:t + 1]) for t in range(0, T, 97)]
    assert torch.equal(y.view(torch.int32), steer_ref(h, a, b, strength, index).view(torch.int32))
    assert all(torch.equal(y[t:t + 1], row) for t, row in zip(range(0, T, 97), alone)), "batched must equal solo"
