"""Where a steered site's time goes on CPU: vLLM's own norm, the steering op, the fused op, the step's plan.

    OMP_NUM_THREADS=1 .venv/bin/python bench/steer_profile.py [--hidden 576] [--sites 61]

SmolLM2-135M's shapes by default (hidden 576, 61 steered sites, 2 adapters). For each decode batch size T it
times one site, in microseconds per call:
    vLLM add+norm    vLLM's RMSNorm module with a residual (what a plain site runs; on CPU its native torch ops
                     behind vLLM's IR dispatch)
    separate         that, then `steer` with mixed strengths {0, 0.25, 0.5, 1} over both adapters (the opaque-op mode)
    fused unsteered  `rms_norm_steer` on a step that steers nothing (what the eager engine runs then)
    fused one        the same with one setting for the whole batch (strength 0.5, adapter 1)
    fused mixed      the same with mixed strengths (what the eager engine runs for the benchmark's batch)
    plan             `plan_rows` for the mixed batch, once per step
"fused one" and "fused mixed" are timed twice in the same run: with the one-pass C++ op (cpu_kernel.py, the
default where it builds) and with the torch ops it falls back to ("torch ops", i.e. before issue 19's C++ op).
The script projects the steering cost of a step: sites x (fused mixed - vLLM add+norm) + plan, in ms, for both.
Then a torch profiler table of the fused mixed op at T = 32. Each figure is the best of 25 repeats of 200 calls:
on a shared, loaded machine the best repeat is the least disturbed one; read differences under ~1 us as noise.
"""

import argparse
import time
from functools import partial
from unittest import mock

import torch
from torch.profiler import profile
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.layernorm import RMSNorm

from steering_kernels import cpu_kernel, plan_rows, rms_norm_steer, steer, unsteered_plan

STRENGTHS = (0.0, 0.25, 0.5, 1.0)


def per_call_us(fn, calls: int = 200, repeats: int = 25) -> float:
    for _ in range(30):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return min(times)


def batch(T: int, D: int):
    g = torch.Generator().manual_seed(T)
    x, residual = torch.randn(T, D, generator=g), torch.randn(T, D, generator=g)
    a, b = 0.05 * torch.randn(2, D, generator=g), 0.05 * torch.randn(2, D, generator=g)   # (K=2, D)
    strength = torch.tensor([STRENGTHS[t % 4] for t in range(T)])
    index = torch.tensor([1 + t % 2 for t in range(T)], dtype=torch.int32)
    return x, residual, a, b, strength, index


def separate(norm, x, residual, a, b, strength, index, plan):
    h, _ = norm(x, residual)
    return steer(h, a, b, strength, index, plan=plan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--sites", type=int, default=61)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    D = args.hidden
    with set_current_vllm_config(VllmConfig()):  # vLLM's CustomOp reads it to pick the CPU implementation
        norm = RMSNorm(D)
    if cpu_kernel.load() is None:
        raise SystemExit("the one-pass CPU op did not build (see the warning above); nothing to compare")
    print(f"hidden={D} sites={args.sites}; microseconds per call (best of 25 x 200); torch = the torch-ops fallback")
    print(f"{'T':>4} {'vLLM add+norm':>14} {'separate':>9} {'fused unsteered':>16} {'one':>6} {'one torch':>10} "
          f"{'mixed':>6} {'mixed torch':>12} {'plan':>6} {'ms/step':>8} {'ms/step torch':>14}")
    for T in (1, 8, 32, 128):
        x, residual, a, b, strength, index = batch(T, D)
        one_s, one_i = torch.full((T,), 0.5), torch.ones(T, dtype=torch.int32)
        fused = partial(rms_norm_steer, x, norm.weight, norm.variance_epsilon, a, b, residual=residual)
        one = partial(fused, one_s, one_i, plan=plan_rows(one_s, one_i))
        mixed = partial(fused, strength, index, plan=plan_rows(strength, index))
        norm_us = per_call_us(partial(norm, x, residual))   # vLLM's native CPU norm is not in place
        separate_us = per_call_us(partial(separate, norm, x, residual, a, b, strength, index,
                                          plan_rows(strength, index)))
        unsteered_us = per_call_us(partial(fused, strength * 0, index, plan=unsteered_plan(T)))
        one_us, mixed_us = per_call_us(one), per_call_us(mixed)
        with mock.patch.object(cpu_kernel, "load", lambda: None):
            one_torch_us, mixed_torch_us = per_call_us(one), per_call_us(mixed)
        plan_us = per_call_us(partial(plan_rows, strength, index))
        step_ms, step_torch_ms = ((args.sites * (us - norm_us) + plan_us) / 1e3 for us in (mixed_us, mixed_torch_us))
        print(f"{T:>4} {norm_us:>14.1f} {separate_us:>9.1f} {unsteered_us:>16.1f} {one_us:>6.1f} {one_torch_us:>10.1f} "
              f"{mixed_us:>6.1f} {mixed_torch_us:>12.1f} {plan_us:>6.1f} {step_ms:>8.2f} {step_torch_ms:>14.2f}")
    x, residual, a, b, strength, index = batch(32, D)
    plan = plan_rows(strength, index)
    with profile() as prof:
        for _ in range(100):
            rms_norm_steer(x, norm.weight, norm.variance_epsilon, a, b, strength, index, residual=residual, plan=plan)
    print("\nfused add + norm + steer, mixed strengths, T=32, 100 calls:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
