"""Speed of the fused RMSNorm(+residual)+steer op against unfused PyTorch and a plain copy of the same bytes.

    fused    steering_kernels.rms_norm_steer (Triton on CUDA; the CPU fast path on CPU)
    unfused  rms_norm_ref then steer_ref: plain PyTorch, one kernel per elementwise op
    copy     dst.copy_(src) moving as many bytes (read + write) as the fused op must

Bytes counted for the fused op: read x (and residual), write y (and the updated residual); the norm weight
and adapter tables are a few KB that stay in cache. GB/s = bytes / time for all three, so "of copy" is the
fraction of achievable memory bandwidth the op reaches (the issue-7 target is 80% at large token counts).

Run:  python bench/kernels.py                      (GPU if present, else CPU; prints a table, no assertions)
      python bench/kernels.py --tokens 1 256 4096 --hidden 576 2048 --dtype bf16 --no-residual
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from anywhere without installing

from steering_kernels import dispatch, rms_norm_steer
from steering_kernels.reference import rms_norm_steer_ref

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_fn(fn, device: str, iters: int, warmup: int = 3) -> float:
    """Seconds per call. CUDA: median of events around each call after warm-up. CPU: the minimum of
    perf_counter samples, because these shared 2-core machines are busy and contention only adds time."""
    for _ in range(warmup):
        fn()
    samples = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return min(samples)
    return statistics.median(samples)


def make_case(T: int, D: int, dtype: torch.dtype, device: str, K: int = 4, seed: int = 0):
    """Inputs as the vLLM plugin passes them: (K, D) fp32 tables, fp32 strengths, int32 1-based indices."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(T, D, generator=g, device=device).to(dtype)
    residual = torch.randn(T, D, generator=g, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(D, generator=g, device=device)).to(dtype)
    a = 0.1 * torch.randn(K, D, generator=g, device=device)
    b = 0.1 * torch.randn(K, D, generator=g, device=device)
    strength = torch.rand(T, generator=g, device=device)
    strength[::4] = 0                                          # a mixed batch: some requests unsteered
    index = torch.randint(0, K + 1, (T,), generator=g, device=device, dtype=torch.int32)
    return x, residual, weight, a, b, strength, index


def bench_case(T: int, D: int, dtype: torch.dtype, device: str, residual: bool = True, iters: int = 50,
               backend: str | None = None, adapters: int = 4) -> dict:
    x, res, weight, a, b, s, idx = make_case(T, D, dtype, device, K=adapters)
    r = res if residual else None
    nbytes = (4 if residual else 2) * T * D * x.element_size()
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    fused = lambda: rms_norm_steer(x, weight, 1e-6, a, b, s, idx, residual=r)
    unfused = lambda: rms_norm_steer_ref(x, weight, 1e-6, a, b, s, idx, residual=r)
    with dispatch.use_backend(backend or dispatch.BACKEND):
        t_fused = time_fn(fused, device, iters)
    t_unfused = time_fn(unfused, device, iters)
    t_copy = time_fn(lambda: dst.copy_(src), device, iters)
    gbs = lambda t: nbytes / t / 1e9
    return {"tokens": T, "hidden": D, "dtype": str(dtype).removeprefix("torch."), "residual": residual,
            "bytes": nbytes, "fused_us": t_fused * 1e6, "unfused_us": t_unfused * 1e6, "copy_us": t_copy * 1e6,
            "fused_gbs": gbs(t_fused), "unfused_gbs": gbs(t_unfused), "copy_gbs": gbs(t_copy),
            "fused_of_copy": t_copy / t_fused, "speedup_vs_unfused": t_unfused / t_fused}


HEADER = (f"{'tokens':>6} {'hidden':>6} {'dtype':>8} {'res':>3} | {'fused us':>9} {'GB/s':>7} | "
          f"{'unfused us':>10} {'GB/s':>7} | {'copy us':>8} {'GB/s':>7} | {'of copy':>7} {'vs unfused':>10}")


def format_row(r: dict) -> str:
    return (f"{r['tokens']:>6} {r['hidden']:>6} {r['dtype']:>8} {'yes' if r['residual'] else 'no':>3} | "
            f"{r['fused_us']:>9.1f} {r['fused_gbs']:>7.1f} | {r['unfused_us']:>10.1f} {r['unfused_gbs']:>7.1f} | "
            f"{r['copy_us']:>8.1f} {r['copy_gbs']:>7.1f} | {r['fused_of_copy']:>7.0%} {r['speedup_vs_unfused']:>9.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bf16 on GPU (serving), fp32 on CPU (bf16 is slow on these CPUs)")
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--hidden", type=int, nargs="+", default=None)
    p.add_argument("--no-residual", action="store_true", help="time the norm without the residual add")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--adapters", type=int, default=4,
                   help="adapters in the table; tokens pick one of them or none (1 = the common serving case)")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    dtype = DTYPES[args.dtype or ("bf16" if gpu else "fp32")]
    tokens = args.tokens or ([1, 16, 256, 4096, 16384] if gpu else [1, 16, 256, 2048])
    hidden = args.hidden or ([576, 2048, 4096, 8192] if gpu else [576, 2048])
    iters = args.iters or (100 if gpu else 20)
    backend = dispatch.BACKEND if gpu else "torch"
    print(f"device={args.device} backend={backend} dtype={dtype} iters={iters} adapters={args.adapters} "
          f"torch={torch.__version__}")
    print(HEADER)
    for D in hidden:
        for T in tokens:
            row = bench_case(T, D, dtype, args.device, not args.no_residual, iters, backend, args.adapters)
            print(format_row(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
