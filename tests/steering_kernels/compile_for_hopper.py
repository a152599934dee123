"""Compile steering_kernels/triton_kernels.py ahead of time for sm_90; run by test_compile.py in a child.

    TRITON_INTERPRET=0 TRITON_CACHE_DIR=EMPTY_DIR python compile_for_hopper.py CASES.json RESULTS.json

CASES.json: [{"name", "kernel", "signature", "constexprs", "num_warps"}, ...]. RESULTS.json: per name
{"ok", "error", "fma_in_ptx", "cubin_bytes"}. Each case is compiled whatever the others do, so one
failure does not hide another. It must be a process of its own: see test_compile.py's docstring.
"""

import json
import sys
import traceback

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from steering_kernels import triton_kernels

HOPPER = GPUTarget("cuda", 90, 32)


def compile_case(case: dict) -> dict:
    fn = getattr(triton_kernels, case["kernel"])
    source = ASTSource(fn=fn, signature=case["signature"], constexprs=case["constexprs"])
    try:
        kernel = triton.compile(source, target=HOPPER,
                                options={"num_warps": case["num_warps"], "enable_fp_fusion": False})
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        return {"ok": False, "error": traceback.format_exc(limit=-3)}
    return {"ok": True, "error": None, "fma_in_ptx": "fma.rn.f32" in kernel.asm["ptx"],
            "cubin_bytes": len(kernel.asm["cubin"])}


def main(cases_path: str, results_path: str) -> int:
    if triton.knobs.runtime.interpret:
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter's triton.language cannot compile")
    with open(cases_path) as f:
        cases = json.load(f)
    results = {case["name"]: compile_case(case) for case in cases}
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
