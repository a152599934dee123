"""Engine-level overhead of steering: plain vLLM vs the steered model, in one process, rounds alternating.

    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_overhead.py [--model PATH] [--rounds 5] [--compile]

Without --model a tiny random Llama is built in a temporary folder (the worst case for relative overhead:
its matmuls are tiny). Two random adapters at every site are constructed for the model. Each round runs the
same greedy batch (ignore_eos, fixed length) three ways: plain vLLM, steered with all strengths 0, and
steered with mixed strengths {0, 0.25, 0.5, 1} over both adapters; it prints tokens/s, the median and the
best round (on a shared machine the best round is the least disturbed one), and their ratios to plain.
Prefix caching is on; every request has a unique cache_salt per round, so no round reuses another's KV.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from transformers import AutoConfig

from adapters import io
from adapters.spec import ModelIdentity, random_spec

PROMPT = "The doctor called the nurse because she was late. Who does the pronoun refer to? Answer:"


def random_adapter(model: str, name: str, seed: int, out: Path) -> str:
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model))
    spec = random_spec(identity, name, seed, scale_a=0.05, scale_b=0.05, base_model=model)
    return str(io.save(spec, out / f"{name}.safetensors"))


def run_round(llm, n_prompts: int, n_tokens: int, steering: list[dict | None], tag: str) -> float:
    from vllm import SamplingParams

    prompts = [{"prompt": f"{i}: {PROMPT}", "cache_salt": f"{tag}-{i}"} for i in range(n_prompts)]
    params = [SamplingParams(temperature=0, max_tokens=n_tokens, ignore_eos=True, extra_args=steering[i])
              for i in range(n_prompts)]
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: a tiny random Llama)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="torch.compile (default: enforce_eager)")
    args = parser.parse_args(argv)

    from vllm import LLM

    from server.vllm_plugin import offline_engine_kwargs

    tmp = Path(tempfile.mkdtemp(prefix="fairsteer-bench-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny model
        from tiny_models import save_tiny_model

        model = str(save_tiny_model(tmp / "tiny-llama"))
    adapters = {name: random_adapter(model, name, seed, tmp) for seed, name in enumerate(("one", "two"))}
    engine = {"enforce_eager": not args.compile, "distributed_executor_backend": "uni", "dtype": "float32",
              "kv_cache_memory_bytes": 256 << 20, "max_model_len": 512, "seed": 0}
    plain = LLM(model=model, **engine)
    steered = LLM(model=model, **engine, **offline_engine_kwargs(model, adapters))

    mixed = [{"fairsteer_adapter": ("one", "two")[i % 2], "fairsteer_strength": (0, 0.25, 0.5, 1.0)[i % 4]}
             for i in range(args.prompts)]
    zero = [{"fairsteer_adapter": "one", "fairsteer_strength": 0.0}] * args.prompts
    ways = {"plain": (plain, [None] * args.prompts), "steered, all 0": (steered, zero),
            "steered, mixed": (steered, mixed)}
    for llm, steering in ways.values():  # warm-up
        run_round(llm, args.prompts, 4, steering, "warm")
    rates: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(args.rounds):
        for way, (llm, steering) in ways.items():
            rates[way].append(run_round(llm, args.prompts, args.tokens, steering, f"{way}-{r}"))
    shutil.rmtree(tmp, ignore_errors=True)
    base, base_best = statistics.median(rates["plain"]), max(rates["plain"])
    print(f"model={model} prompts={args.prompts} tokens={args.tokens} rounds={args.rounds} "
          f"mode={'compile' if args.compile else 'eager'}")
    for way, values in rates.items():
        med, best = statistics.median(values), max(values)
        print(f"{way:16s} median {med:8.1f} tok/s (ratio {med / base:.3f})  best {best:8.1f} tok/s "
              f"(ratio {best / base_best:.3f})  rounds: {', '.join(f'{v:.0f}' for v in values)}")


if __name__ == "__main__":
    main()
