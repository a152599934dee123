"""The Triton kernels compile for a Hopper GPU (sm_90) on this CPU-only machine.

The interpreter runs kernels as numpy and cannot catch what only the compiler checks (types, layouts, loop-
carried values); ahead-of-time compilation to PTX/cubin needs no GPU. Also checks the PTX has no fused
multiply-add, which is why fp32 steering rounds exactly like the reference.
"""

import importlib.util
from pathlib import Path

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

PATH = Path(__file__).resolve().parents[2] / "steering_kernels" / "triton_kernels.py"
TENSOR_ARGS = ("x_ptr", "res_ptr", "w_ptr", "out_ptr", "res_out_ptr")


@pytest.fixture(scope="module")
def compiled_module():
    """A second copy of triton_kernels decorated for compilation, whatever TRITON_INTERPRET says."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "0")
    try:
        spec = importlib.util.spec_from_file_location("fairsteer_triton_kernels_compiled", PATH)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        mp.undo()
    return module


def _compile(fn, signature, constexprs, num_warps):
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "enable_fp_fusion": False})


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_steer_kernel_compiles_for_hopper_without_fma(compiled_module, dtype):
    sig = {"h_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "a_ptr": "*fp32", "b_ptr": "*fp32", "s_ptr": "*fp32",
           "idx_ptr": "*i32", "T": "i32", "D": "i32", "K": "i32", "stride_h": "i32", "stride_out": "i32",
           "HAS_INDEX": "constexpr", "BLOCK_T": "constexpr", "BLOCK_D": "constexpr"}
    kernel = _compile(compiled_module._steer_kernel, sig, {"HAS_INDEX": True, "BLOCK_T": 4, "BLOCK_D": 1024}, 8)
    assert "fma.rn.f32" not in kernel.asm["ptx"], "FP contraction must stay off (exact fp32 steering)"


@pytest.mark.parametrize("single_tile", [True, False])
def test_fused_kernel_compiles_for_hopper(compiled_module, single_tile):
    sig = {name: "*bf16" for name in TENSOR_ARGS}
    sig |= {"a_ptr": "*fp32", "b_ptr": "*fp32", "s_ptr": "*fp32", "idx_ptr": "*i32", "T": "i32", "D": "i32",
            "K": "i32", "eps": "fp32", "stride_x": "i32", "stride_res": "i32", "stride_out": "i32",
            "stride_res_out": "i32"}
    flags = {"HAS_RESIDUAL": True, "HAS_INDEX": True, "STEER": True, "SINGLE_TILE": single_tile,
             "BLOCK_T": 1, "BLOCK_D": 8192}
    sig |= {name: "constexpr" for name in flags}
    kernel = _compile(compiled_module._rms_norm_steer_kernel, sig, flags, 16)
    assert kernel.asm["cubin"], "ptxas produced no cubin"
    assert "fma.rn.f32" not in kernel.asm["ptx"]
