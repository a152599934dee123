"""The one-pass CPU steering op against the torch ops it replaces, inside one real engine, rounds alternating.

    OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv/bin/python bench/engine_cpu_op.py \
        --model ~/.cache/fairsteer/models/smollm2-135m-instruct [--prompts 32,128] [--tokens 16] [--rounds 7]

One eager steered engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and serves the same greedy
batch (mixed strengths {0, 0.25, 0.5, 1} over two random adapters at all sites) in alternating rounds with the
CPU steering op as shipped ("one pass": the C++ loop of steering_kernels/cpu_kernel.py below
COMPILED_MIN_TOKENS tokens) and with its fallback forced ("torch ops", the path before issue 19). Same engine
instance, same norms, same tokens (checked every round), so the only difference is the steering arithmetic.
Per arm: tokens per wall second and per CPU second of this process (median, and the paired ratio one pass /
torch ops within a round), and the time spent inside the steering of decode-sized steps (`dispatch._steer_cpu`
calls below COMPILED_MIN_TOKENS tokens, timed around each call by this thread's CPU clock, so that time-slicing
on a loaded machine does not count): the median per site call, and that times 61 sites per step.
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_overhead import arms, random_adapter, run_round, start_llm

from steering_kernels import cpu_kernel, dispatch

SITES = 61
DECODE_CALLS: list[float] = []   # thread CPU seconds of each decode-sized steering call of the current round


def time_the_steering() -> None:
    """Record the CPU time of every decode-sized `_steer_cpu` call (the steering after a site's norm)."""
    inner = dispatch._steer_cpu

    def timed(h, *args, **kwargs):
        start = time.thread_time()
        try:
            return inner(h, *args, **kwargs)
        finally:
            if h.shape[0] < dispatch.COMPILED_MIN_TOKENS:
                DECODE_CALLS.append(time.thread_time() - start)

    dispatch._steer_cpu = timed


def one_round(llm, n_prompts, n_tokens, steering, tag, torch_ops: bool):
    DECODE_CALLS.clear()
    cpu = sum(psutil.Process().cpu_times()[:2])
    with mock.patch.object(cpu_kernel, "load", lambda: None) if torch_ops else contextlib.nullcontext():
        rate, _, tokens = run_round(llm, n_prompts, n_tokens, steering, tag)
    cpu = sum(psutil.Process().cpu_times()[:2]) - cpu
    n = sum(map(len, tokens))
    return rate, n / cpu, statistics.median(DECODE_CALLS or [0.0]), tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", default="32,128", help="concurrent sequences: N, or a list N1,N2,...")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise SystemExit("set VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine (and its ops) runs in this process")
    torch.set_num_threads(1)
    if cpu_kernel.load() is None:
        raise SystemExit("the one-pass CPU op did not build (see the warning above); nothing to compare")
    from server.vllm_plugin import offline_engine_kwargs

    time_the_steering()
    tmp = Path(tempfile.mkdtemp(prefix="fairsteer-cpu-op-"))
    adapters = {name: random_adapter(args.model, name, seed, tmp) for seed, name in enumerate(("one", "two"))}
    engine = {"enforce_eager": True, "distributed_executor_backend": "uni", "dtype": "float32",
              "kv_cache_memory_bytes": 256 << 20, "max_model_len": 512, "seed": 0}
    steered = start_llm(model=args.model, **engine, **offline_engine_kwargs(args.model, adapters))
    for n_prompts in (int(n) for n in args.prompts.split(",")):
        _, mixed = arms(None, steered, n_prompts)["steered, mixed"]
        for torch_ops in (False, True):
            one_round(steered, n_prompts, 4, mixed, f"warm-{n_prompts}-{torch_ops}", torch_ops)
        results = {"one pass": [], "torch ops": []}
        for r in range(args.rounds):
            tokens = {}
            for way in (("one pass", "torch ops") if r % 2 == 0 else ("torch ops", "one pass")):
                *measured, tokens[way] = one_round(steered, n_prompts, args.tokens, mixed, f"{way}-{n_prompts}-{r}",
                                                   way == "torch ops")
                results[way].append(measured)
            if tokens["one pass"] != tokens["torch ops"]:
                raise SystemExit(f"the two CPU paths gave different tokens ({n_prompts} prompts, round {r})")
        print(f"\nmodel={args.model} prompts={n_prompts} tokens={args.tokens} rounds={args.rounds} eager, mixed "
              f"strengths, 61 sites; same tokens on both paths in every round; load {os.getloadavg()}")
        for way, rows in results.items():
            wall, cpu, per_call = (list(column) for column in zip(*rows, strict=True))
            us = statistics.median(per_call) * 1e6
            print(f"{way:10s} wall tok/s median {statistics.median(wall):7.1f}  CPU tok/s median "
                  f"{statistics.median(cpu):7.1f}  decode-sized steering {us:6.1f} us per site call, "
                  f"{us * SITES / 1e3:5.2f} ms per step ({SITES} sites)")
        for clock, column in (("wall", 0), ("CPU", 1)):
            paired = statistics.median(a[column] / b[column] for a, b in zip(results["one pass"], results["torch ops"],
                                                                           strict=True))
            print(f"paired ratio one pass / torch ops, {clock} clock: {paired:.3f}")


if __name__ == "__main__":
    main()
