"""The one-pass C++ CPU op (steering_kernels/cpu_kernel.py): steer_ref's bits, untouched rows, and the fallback."""

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from steering_kernels import cpu_kernel, dispatch, rms_norm_steer, steer
from steering_kernels.reference import rms_norm_steer_ref, steer_ref

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float64: torch.int64}
SPECIAL = (float("inf"), -float("inf"), float("nan"), -0.0, 0.0)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bits(t: torch.Tensor) -> torch.Tensor:
    """Compare as integers: torch.equal calls NaN unequal to itself and -0.0 equal to +0.0."""
    return t.contiguous().view(BITS[t.dtype])


@pytest.fixture(scope="module")
def kernel():
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler on this machine: the torch path is all there is (tested below)")
    module = cpu_kernel.load()
    assert module is not None, "a compiler is installed but the one-pass op failed to build (see the warning)"
    return module


def batch(T, D, K=3, dtype=torch.float32, seed=0):
    """Random rows with ±inf, NaN and ±0 in some; strengths incl. 0, -0.0 and negative; indices incl. 0 and -1."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(T, D, generator=g) * 2
    for t in range(0, T, 5):
        h[t, : len(SPECIAL)] = torch.tensor(SPECIAL)[: D]
    a, b = torch.randn(K, D, generator=g) * 0.3, torch.randn(K, D, generator=g) * 0.3
    choices = torch.tensor([0.0, -0.0, 0.25, 1.0, -0.5, 1.7])
    strength = choices[torch.randint(0, len(choices), (T,), generator=g)]
    strength[::3] = torch.rand(len(strength[::3]), generator=g) * 2 - 0.5
    index = torch.randint(-1, K + 1, (T,), generator=g, dtype=torch.int32)
    return h.to(dtype), a, b, strength, index


def one_pass(kernel, h, a, b, strength, index, in_place=False):
    out = h.clone() if in_place else torch.empty_like(h)
    kernel.steer_into(out, out if in_place else h, a, b, strength, index)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_decode_size_gives_steer_refs_bits(kernel, dtype):
    for T in range(1, dispatch.COMPILED_MIN_TOKENS):
        h, a, b, strength, index = batch(T, 37, dtype=dtype, seed=T)   # 37: the vector loop's tail runs too
        for idx in (index, index.long(), None):
            expected = bits(steer_ref(h, a, b, strength, idx))
            assert torch.equal(bits(one_pass(kernel, h, a, b, strength, idx)), expected), (T, idx is None)
            assert torch.equal(bits(one_pass(kernel, h, a, b, strength, idx, in_place=True)), expected), T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 8, 32, 128, 255])
def test_model_width_through_the_dispatcher_gives_the_references_bits(kernel, dtype, T):
    h, a, b, strength, index = batch(T, 576, K=2, dtype=dtype, seed=100 + T)
    weight = (1 + 0.3 * torch.randn(576)).to(dtype)
    residual = torch.randn_like(h)
    plan = dispatch.plan_rows(strength, index)
    with dispatch.use_backend("torch"):
        assert torch.equal(bits(steer(h, a, b, strength, index, plan=plan)),
                           bits(steer_ref(h, a, b, strength, index)))
        y, updated = rms_norm_steer(h, weight, 1e-6, a, b, strength, index, residual=residual, plan=plan)
    y_ref, updated_ref = rms_norm_steer_ref(h, weight, 1e-6, a, b, strength, index, residual=residual)
    assert torch.equal(bits(y), bits(y_ref)) and torch.equal(bits(updated), bits(updated_ref))


@pytest.mark.parametrize("dtype", DTYPES)
def test_unsteered_rows_keep_every_bit_and_strength_zero_is_the_identity(kernel, dtype):
    h, a, b, strength, index = batch(40, 24, dtype=dtype)
    h[7] = torch.tensor(SPECIAL * 5)[:24].to(dtype)
    strength[[7, 8]] = torch.tensor([0.0, -0.0])
    index[9], index[10] = 0, -1
    for in_place in (False, True):
        y = one_pass(kernel, h, a, b, strength, index, in_place)
        for row in (7, 8, 9, 10):
            assert torch.equal(bits(y[row]), bits(h[row])), (row, in_place)
        zero = one_pass(kernel, h, a, b, torch.zeros_like(strength), index, in_place)
        assert torch.equal(bits(zero), bits(h)), "strength 0 must not change a single bit"
    tables = a.clone(), b.clone()
    one_pass(kernel, h, a, b, strength, index)
    assert torch.equal(a, tables[0]) and torch.equal(b, tables[1]), "steering must never write the adapter tables"


def test_the_dispatcher_runs_the_one_pass_op_at_decode_sizes_only(kernel, monkeypatch):
    steered = []

    class Spy:
        def steer_into(self, *args):
            done = kernel.steer_into(*args)
            if done:
                steered.append(args[1].shape[0])
            return done

    monkeypatch.setattr(cpu_kernel, "load", Spy)
    for T in (1, 32, dispatch.COMPILED_MIN_TOKENS - 1, dispatch.COMPILED_MIN_TOKENS):
        h, a, b, strength, index = batch(T, 16, seed=T)
        strength[:] = 0.5
        assert torch.equal(bits(steer(h, a, b, strength, index)), bits(steer_ref(h, a, b, strength, index)))
    assert steered == [1, 32, dispatch.COMPILED_MIN_TOKENS - 1], "prefill sizes take the compiled reference"
    h, a, b, strength, index = batch(8, 16)
    for args in ((h.double(), a.double(), b.double(), strength, index),    # fp64: the torch ops, as documented
                 (h.t().contiguous().t(), a, b, strength, index)):         # a (T, D) view, not contiguous
        assert torch.equal(bits(steer(*args)), bits(steer_ref(*args)))
    assert len(steered) == 3, "layouts the loop does not take must go to the torch ops"


def test_layouts_it_does_not_take_are_left_alone_and_a_bad_index_never_reads_outside_the_tables(kernel):
    h, a, b, strength, index = batch(8, 16)
    out = torch.zeros_like(h)
    for args in ((h, a.double(), b, strength, index), (h, a, b, torch.randn(16)[::2], index),
                 (h, a, b, strength, index.short()), (h, a[:, :8], b[:, :8], strength, index)):
        assert kernel.steer_into(out, *args) is False and out.eq(0).all()
    assert kernel.steer_into(h.double().clone(), h.double(), a, b, strength, index) is False
    with pytest.raises(RuntimeError, match="out of range"):
        kernel.steer_into(out, h, a, b, strength.abs() + 1, index * 0 + 4)   # K = 3


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_torch_ops_fallback_gives_the_same_bits(monkeypatch, dtype):
    monkeypatch.setattr(cpu_kernel, "load", lambda: None)
    for T in (1, 3, 32, 129):
        h, a, b, strength, index = batch(T, 40, dtype=dtype, seed=T)
        with dispatch.use_backend("torch"):
            for idx in (index, None):
                assert torch.equal(bits(steer(h, a, b, strength, idx)), bits(steer_ref(h, a, b, strength, idx)))


def test_without_a_compiler_one_warning_names_the_reason_and_steering_still_works(tmp_path):
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from steering_kernels import cpu_kernel, steer, steer_ref\n"
        "h, a, b = torch.randn(4, 8), torch.randn(2, 8), torch.randn(2, 8)\n"
        "s, i = torch.full((4,), 0.5), torch.tensor([1, 2, 0, 1], dtype=torch.int32)\n"
        "for _ in range(3):\n"
        "    assert torch.equal(steer(h, a, b, s, i), steer_ref(h, a, b, s, i))\n"
        "assert cpu_kernel.load() is None\n"
        "print('STEERED')\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"))
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0 and "STEERED" in run.stdout, run.stderr[-2000:]
    warnings = [line for line in run.stderr.splitlines() if "could not be built" in line]
    assert len(warnings) == 1, run.stderr[-2000:]
    assert "no C++ compiler" in warnings[0] and "torch ops instead" in warnings[0]


def test_a_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_is_kept(tmp_path):
    stale, fresh = tmp_path / "stale" / "lock", tmp_path / "fresh" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - cpu_kernel.STALE_LOCK_S - 60
    os.utime(stale, (old, old))
    for lock in (stale, fresh, tmp_path / "none" / "lock"):
        cpu_kernel._remove_stale_lock(lock)
    assert not stale.exists() and fresh.exists()
