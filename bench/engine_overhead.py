"""Engine-level overhead of steering: plain vLLM vs the steered model, in one process, rounds alternating.

    OMP_NUM_THREADS=1 .venv/bin/python bench/engine_overhead.py [--model PATH] [--rounds 5] [--compile]
        [--prompts 32 | --prompts 1,8,32,128] [--sites N] [--also-sites M] [--json OUT]

Without --model a tiny random Llama is built in a temporary folder (the worst case for relative overhead:
its matmuls are tiny). Two random adapters at every site are constructed for the model. Each round runs the
same greedy batch (ignore_eos, fixed length) three ways: plain vLLM, steered with all strengths 0, and
steered with mixed strengths {0, 0.25, 0.5, 1} over both adapters. Two clocks: tokens per wall second, and
tokens per CPU second of the engine's own processes (on a loaded machine time-slicing inflates wall time but
not, to first order, the CPU time the engine itself used). For each: the median and best round, their ratios
to plain, and the paired ratio (median over rounds of arm / plain within the same round).
Prefix caching is on; every request has a unique cache_salt per round, so no round reuses another's KV.
All prompts are submitted at once, so --prompts is the number of concurrent sequences; a list runs each
batch size in turn, all arms alternating within it. Each round also checks that the all-0 arm produced
plain vLLM's tokens (strength 0 must be bit-identical). --json writes the rounds for bench/plot_overhead.py.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from transformers import AutoConfig

from adapters import io
from adapters.spec import ModelIdentity, SteeringSpec, random_spec

PROMPT = "The doctor called the nurse because she was late. Who does the pronoun refer to? Answer:"


def random_adapter(model: str, name: str, seed: int, out: Path, num_sites: int | None = None) -> str:
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model))
    spec = random_spec(identity, name, seed, scale_a=0.05, scale_b=0.05, base_model=model)
    if num_sites is not None:  # the first num_sites sites only (the cost curve over steered sites)
        spec = SteeringSpec(spec.sites[:num_sites], spec.a[:num_sites], spec.b[:num_sites], spec.meta)
    return str(io.save(spec, out / f"{name}.safetensors"))


_ENGINE_PROCESSES: dict[int, list[psutil.Process]] = {}


def start_llm(**kwargs):
    """vLLM's LLM, remembering the processes it started (its engine) for CPU-time accounting."""
    from vllm import LLM

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    llm = LLM(**kwargs)
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _ENGINE_PROCESSES[id(llm)] = started or [psutil.Process()]  # in-process engine: this process
    return llm


def _cpu_seconds(llm) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in _ENGINE_PROCESSES[id(llm)])


def run_round(llm, n_prompts: int, n_tokens: int, steering: list[dict | None], tag: str):
    """(tokens per wall second, tokens per engine CPU second, the token ids of every completion) of one batch."""
    from vllm import SamplingParams

    prompts = [{"prompt": f"{i}: {PROMPT}", "cache_salt": f"{tag}-{i}"} for i in range(n_prompts)]
    params = [SamplingParams(temperature=0, max_tokens=n_tokens, ignore_eos=True, extra_args=steering[i])
              for i in range(n_prompts)]
    cpu, start = _cpu_seconds(llm), time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds(llm) - cpu
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    n = sum(map(len, tokens))
    return n / elapsed, n / max(cpu, 1e-9), tokens


def arms(plain, steered, n_prompts: int, few_sites: tuple[int, object] | None = None) -> dict:
    mixed = [{"fairsteer_adapter": ("one", "two")[i % 2], "fairsteer_strength": (0, 0.25, 0.5, 1.0)[i % 4]}
             for i in range(n_prompts)]
    zero = [{"fairsteer_adapter": "one", "fairsteer_strength": 0.0}] * n_prompts
    ways = {"plain": (plain, [None] * n_prompts), "steered, all 0": (steered, zero),
            "steered, mixed": (steered, mixed)}
    if few_sites is not None:
        ways[f"steered, mixed, {few_sites[0]} sites"] = (few_sites[1], mixed)
    return ways


def measure(plain, steered, n_prompts: int, args, few_sites=None) -> dict[str, dict[str, list[float]]]:
    """Rates per arm over alternating rounds; raises if the all-0 arm ever differs from plain vLLM."""
    ways = arms(plain, steered, n_prompts, few_sites)
    for llm, steering in ways.values():  # warm-up
        run_round(llm, n_prompts, 4, steering, f"warm-{n_prompts}")
    rates: dict[str, list[float]] = {way: [] for way in ways}
    cpu_rates: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(args.rounds):
        tokens = {}
        for way, (llm, steering) in ways.items():
            rate, cpu_rate, tokens[way] = run_round(llm, n_prompts, args.tokens, steering, f"{way}-{n_prompts}-{r}")
            rates[way].append(rate)
            cpu_rates[way].append(cpu_rate)
        if tokens["steered, all 0"] != tokens["plain"]:
            raise SystemExit(f"strength 0 differs from plain vLLM ({n_prompts} prompts, round {r})")
    return {"wall": rates, "cpu": cpu_rates}


def paired_ratio(values: list[float], plain: list[float]) -> float:
    """Median over rounds of this arm's rate / plain's rate in the same round (measured side by side)."""
    return statistics.median(v / p for v, p in zip(values, plain, strict=True))


def report(rates: dict[str, dict[str, list[float]]]) -> None:
    for clock, unit in (("wall", "tok/s"), ("cpu", "tok per engine CPU-s")):
        plain = rates[clock]["plain"]
        base, base_best = statistics.median(plain), max(plain)
        print(f"-- {unit}")
        for way, values in rates[clock].items():
            med, best = statistics.median(values), max(values)
            print(f"{way:16s} median {med:8.1f} (ratio {med / base:.3f})  paired ratio {paired_ratio(values, plain):.3f}"
                  f"  best {best:8.1f} (ratio {best / base_best:.3f})  rounds: {', '.join(f'{v:.0f}' for v in values)}",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: a tiny random Llama)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompts", default="32", help="concurrent sequences: N, or a list N1,N2,...")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="torch.compile (default: enforce_eager)")
    parser.add_argument("--sites", type=int, help="steer only the first N sites (default: all)")
    parser.add_argument("--also-sites", type=int, help="a third engine steering only the first N sites: one more "
                                                         "arm, mixed strengths, alternating with the others")
    parser.add_argument("--json", help="write the settings and every round's rates to this file")
    args = parser.parse_args(argv)
    batch_sizes = [int(n) for n in args.prompts.split(",")]

    from server.vllm_plugin import offline_engine_kwargs

    tmp = Path(tempfile.mkdtemp(prefix="fairsteer-bench-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny model
        from tiny_models import save_tiny_model

        model = str(save_tiny_model(tmp / "tiny-llama"))
    adapters = {name: random_adapter(model, name, seed, tmp, args.sites) for seed, name in enumerate(("one", "two"))}
    engine = {"enforce_eager": not args.compile, "distributed_executor_backend": "uni", "dtype": "float32",
              "kv_cache_memory_bytes": 256 << 20, "max_model_len": 512, "seed": 0}
    plain = start_llm(model=model, **engine)
    steered = start_llm(model=model, **engine, **offline_engine_kwargs(model, adapters))
    few_sites = None
    if args.also_sites:
        (tmp / "few").mkdir()
        few = {name: random_adapter(model, name, seed, tmp / "few", args.also_sites)
               for seed, name in enumerate(("one", "two"))}
        few_sites = (args.also_sites, start_llm(model=model, **engine, **offline_engine_kwargs(model, few)))
    results = []
    for n_prompts in batch_sizes:
        rates = measure(plain, steered, n_prompts, args, few_sites)
        print(f"model={model} prompts={n_prompts} tokens={args.tokens} rounds={args.rounds} "
              f"mode={'compile' if args.compile else 'eager'} sites={args.sites or 'all'}; "
              f"all-0 tokens equal plain in every round", flush=True)
        report(rates)
        results.append({"prompts": n_prompts, "rates": rates})
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        settings = {"model": model, "tokens": args.tokens, "rounds": args.rounds, "sites": args.sites or "all",
                    "mode": "compile" if args.compile else "eager", "load": os.getloadavg()}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
