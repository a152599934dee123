"""Where a steered engine's step time goes: torch profiler over a real vLLM engine, plain and steered.

    OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv/bin/python bench/engine_profile.py \
        --model ~/.cache/fairsteer/models/smollm2-135m-instruct [--prompts 32] [--tokens 16] [--compile]

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the profiler sees every op of every
step. One batch (mixed strengths {0, 0.25, 0.5, 1} over two random adapters at all sites) runs under the
profiler on the steered engine, and the same batch unsteered on a plain engine. The per-step bookkeeping is
labelled here (not in the plugin, whose hot path stays free of profiler calls): `fairsteer.update_state`
(the logits processor), `fairsteer.prepare_step` (per-token tables and the row plan). The site ops appear
as `fairsteer::rms_norm_steer` / `fairsteer::steer`. Prints per-step milliseconds of each, and the top ops.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_overhead import arms, random_adapter, run_round, start_llm

LABELS = ("fairsteer.update_state", "fairsteer.prepare_step", "fairsteer::rms_norm_steer", "fairsteer::steer")


def label_bookkeeping() -> None:
    """Wrap the plugin's two per-step hooks in profiler labels (this process only)."""
    from server.vllm_plugin import models, processor

    prepare, update = models.prepare_step, processor.SteeringStateProcessor.update_state

    def prepare_step(positions):
        with record_function("fairsteer.prepare_step"):
            return prepare(positions)

    def update_state(self, batch_update):
        with record_function("fairsteer.update_state"):
            return update(self, batch_update)

    models.prepare_step = prepare_step
    processor.SteeringStateProcessor.update_state = update_state


def profile_batch(llm, steering, args, tag: str):
    run_round(llm, args.prompts, 4, steering, f"warm-{tag}")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rate, _, _ = run_round(llm, args.prompts, args.tokens, steering, tag)
    return rate, prof.key_averages()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise SystemExit("set VLLM_ENABLE_V1_MULTIPROCESSING=0 so the engine (and its ops) runs in this process")
    torch.set_num_threads(1)
    from server.vllm_plugin import offline_engine_kwargs

    label_bookkeeping()
    tmp = Path(tempfile.mkdtemp(prefix="fairsteer-profile-"))
    adapters = {name: random_adapter(args.model, name, seed, tmp) for seed, name in enumerate(("one", "two"))}
    engine = {"enforce_eager": not args.compile, "distributed_executor_backend": "uni", "dtype": "float32",
              "kv_cache_memory_bytes": 256 << 20, "max_model_len": 512, "seed": 0}
    plain = start_llm(model=args.model, **engine)
    steered = start_llm(model=args.model, **engine, **offline_engine_kwargs(args.model, adapters))
    ways = arms(plain, steered, args.prompts)
    steps = args.tokens  # one prefill step (all prompts fit) + tokens - 1 decode steps
    for way in ("plain", "steered, mixed"):
        llm, steering = ways[way]
        rate, events = profile_batch(llm, steering, args, way.replace(", ", "-"))
        total_ms = sum(e.self_cpu_time_total for e in events) / 1e3
        print(f"\n== {way}: {rate:.1f} tok/s; {total_ms / steps:.2f} ms of profiled CPU time per step "
              f"({args.prompts} prompts, {steps} steps, mode={'compile' if args.compile else 'eager'})")
        for event in events:
            if event.key in LABELS:
                print(f"{event.key:28s} {event.count / steps:6.1f} calls/step  {event.cpu_time_total / 1e3 / steps:7.3f} "
                      f"ms/step (incl. children)  {event.cpu_time_total / max(event.count, 1):7.1f} us/call")
        print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
