"""Serving overhead of fairsteer at tensor/pipeline parallelism: steered vs plain vLLM, one run, ratios.

bench/serve_overhead.py's arms and rounds (plain vLLM, fairsteer at mixed strengths, fairsteer at
strength 0; rotating order; tokens per wall second and per CPU second of each server's process tree,
workers included), with both servers at the same parallel setting and one core per worker
(VLLM_CPU_OMP_THREADS_BIND="0|1", the multiprocessing executor):

    OMP_NUM_THREADS=1 .venv/bin/python bench/parallel_overhead.py --tensor-parallel-size 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/parallel_overhead.py --pipeline-parallel-size 2   # compiled
    .venv/bin/python bench/parallel_overhead.py --tensor-parallel-size 2 --model some/4-head-model

The default model is the tests' tiny random Llama (4 heads, so it splits over 2 ranks); SmolLM2-135M has
9 attention heads and cannot run at TP=2. Both servers are alive during the run but only one is sent
requests at a time.
"""

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from serve_overhead import MIXED_STRENGTHS, Arm, measure, prepare, report
from server_process import ServerProcess, fairsteer_argv, free_port, plain_vllm_argv

PINNED = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "OMP_NUM_THREADS": "1"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (random, built here), a folder or an alias")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=32, help="requests per round per arm")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def parallel_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The same vLLM options for both servers (fairsteer would add mp and compiled-PP by itself)."""
    options = ("--tensor-parallel-size", str(args.tensor_parallel_size),
               "--pipeline-parallel-size", str(args.pipeline_parallel_size),
               "--max-num-seqs", str(max(args.concurrency, 1)), "--kv-cache-memory-bytes", str(128 << 20),
               "--max-model-len", "512")
    if args.tensor_parallel_size * args.pipeline_parallel_size > 1:
        options += ("--distributed-executor-backend", "mp")
    if args.pipeline_parallel_size > 1:
        options += ("--no-enforce-eager",)  # vLLM 0.32 CPU: eager PP fails (docs/distributed.md)
    return options


def main() -> int:
    args = parse_args()
    engine = parallel_options(args)
    with tempfile.TemporaryDirectory(prefix="fairsteer-bench-") as tmp:
        workdir = Path(tmp)
        model, adapter = prepare(args.model, workdir)
        ports = {"fairsteer": free_port(), "plain": free_port()}
        argvs = {"fairsteer": fairsteer_argv(model, {"bench": str(adapter)}, ports["fairsteer"], engine_options=engine),
                 "plain": plain_vllm_argv(model, ports["plain"], engine_options=engine)}
        servers: dict[str, ServerProcess] = {}
        try:
            for name, argv in argvs.items():  # one at a time: two parallel start-ups would share 2 cores
                servers[name] = ServerProcess(argv, ports[name], workdir / f"{name}.log", env=PINNED).start()
                servers[name].wait_ready(900)
            arms = [Arm("plain", servers["plain"], None), Arm("mixed", servers["fairsteer"], MIXED_STRENGTHS),
                    Arm("zero", servers["fairsteer"], (0.0,))]
            results = asyncio.run(measure(model, args, arms))
        finally:
            for server in servers.values():
                server.stop()
    print(f"parallel: tensor {args.tensor_parallel_size} x pipeline {args.pipeline_parallel_size}; "
          f"vLLM options {' '.join(engine)}")
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
