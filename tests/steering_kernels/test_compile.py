"""The Triton kernels compile for a Hopper GPU (sm_90) on this CPU-only machine.

The interpreter runs kernels as numpy and cannot catch what only the compiler checks (types, layouts, loop-
carried values); ahead-of-time compilation to PTX/cubin needs no GPU. Also checks the PTX has no fused
multiply-add, which is why fp32 steering rounds exactly like the reference.

The compiler runs in a child process (compile_for_hopper.py) with TRITON_INTERPRET=0 and an empty Triton
cache, for two reasons found the hard way:
- Under TRITON_INTERPRET=1 (`make test`; conftest.py sets it where there is no CUDA) Triton's own library
  (`tl.sum`, `tl.zeros_like`: @jit functions in triton/language/standard.py) is built for the interpreter
  when triton is first imported. Calling one while compiling patches triton.language's builtins with the
  interpreter's for good, and compiling fails: "'value' object has no attribute 'dtype'" (Triton 3.7.1,
  3.8.0 and 3.9.0 alike). A second copy of our module decorated without the interpreter is not enough.
- triton.compile returns a kernel from ~/.triton/cache without compiling when that source was compiled
  there before, which hid the failure on a machine where it once compiled outside the interpreter.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("compile_for_hopper.py")
FUSED_TENSORS = ("x_ptr", "res_ptr", "w_ptr", "out_ptr", "res_out_ptr")


def _steer_case(name: str, dtype: str, has_index: bool) -> dict:
    sig = {"h_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "a_ptr": "*fp32", "b_ptr": "*fp32", "s_ptr": "*fp32",
           "idx_ptr": "*i32", "T": "i32", "D": "i32", "K": "i32", "stride_h": "i32", "stride_out": "i32"}
    flags = {"HAS_INDEX": has_index, "BLOCK_T": 4, "BLOCK_D": 1024}
    return {"name": name, "kernel": "_steer_kernel", "signature": sig | dict.fromkeys(flags, "constexpr"),
            "constexprs": flags, "num_warps": 8}


def _fused_case(name: str, single_tile: bool, steer: bool = True, residual: bool = True,
                block_t: int = 1, block_d: int = 8192, num_warps: int = 16) -> dict:
    sig = dict.fromkeys(FUSED_TENSORS, "*bf16")
    sig |= {"a_ptr": "*fp32", "b_ptr": "*fp32", "s_ptr": "*fp32", "idx_ptr": "*i32", "T": "i32", "D": "i32",
            "K": "i32", "eps": "fp32", "stride_x": "i32", "stride_res": "i32", "stride_out": "i32",
            "stride_res_out": "i32"}
    flags = {"HAS_RESIDUAL": residual, "HAS_INDEX": steer, "STEER": steer, "SINGLE_TILE": single_tile,
             "BLOCK_T": block_t, "BLOCK_D": block_d}
    return {"name": name, "kernel": "_rms_norm_steer_kernel", "signature": sig | dict.fromkeys(flags, "constexpr"),
            "constexprs": flags, "num_warps": num_warps}


# Each branch the launchers can take: steer with and without an index table; the fused kernel in one tile
# and in two passes (rows wider than MAX_BLOCK_D), and as the plain norm (a=None, no residual).
CASES = [
    _steer_case("steer bf16", "bf16", True),
    _steer_case("steer fp32", "fp32", True),
    _steer_case("steer fp32 one adapter", "fp32", False),
    _fused_case("fused single tile", True),
    _fused_case("fused two passes", False),
    _fused_case("plain norm two passes", False, steer=False, residual=False, block_t=4, block_d=1024,
                num_warps=8),
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """{case name: result} from one child process compiling every case into an empty cache."""
    work = tmp_path_factory.mktemp("hopper-compile")
    (work / "cases.json").write_text(json.dumps(CASES))
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(work / "triton-cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT), str(work / "cases.json"), str(work / "results.json")],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"compile_for_hopper.py failed:\n{done.stdout}\n{done.stderr}"
    return json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_kernel_compiles_for_hopper_without_fma(compiled, case):
    result = compiled[case["name"]]
    assert result["ok"], f"{case['kernel']} with {case['constexprs']} does not compile for sm_90:\n" \
                         f"{result['error']}"
    assert result["cubin_bytes"] > 0, "ptxas produced no cubin"
    assert not result["fma_in_ptx"], "FP contraction must stay off (exact fp32 steering)"
