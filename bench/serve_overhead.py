"""Serving overhead of fairsteer against plain vLLM: same model, same prompts, same engine options.

Three arms, measured in one run, in rotating order every round (so drift in the machine's load hits
each arm alike):

    plain       vLLM's own OpenAI server (python -m vllm.entrypoints.openai.api_server)
    mixed       fairsteer serve, each request at a different strength (0, 0.25, ..., 1: all distinct
                cache salts and per-token strengths in one batch)
    zero        fairsteer serve, every request at strength 0 (the steered model, nothing steered)
    http        (with --http-arm) fairsteer serve without adapters: only the HTTP layer, plain model

Each round sends the same `--requests` greedy completions with `--concurrency` in flight, `ignore_eos`
so every request generates exactly `--max-tokens` tokens. Two throughputs per round: generated tokens
per wall second, and per CPU second used by the server's processes (API server + engine core). On a
shared machine the second is the steadier one: other people's jobs stretch wall time, not our CPU time.
Prints each round, then the medians per arm and the median over rounds of each round's ratio to plain.

    .venv/bin/python bench/serve_overhead.py                        # tiny random model (built here)
    .venv/bin/python bench/serve_overhead.py --model smollm2-135m-instruct --requests 32 --max-tokens 32

The adapter is constructed (seeded random a, b at every site): overhead does not depend on its values.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from server_process import ServerProcess, fairsteer_argv, free_port, plain_vllm_argv

from adapters import io
from adapters.spec import ModelIdentity, random_spec

PROMPTS = ["The doctor called the nurse because", "Write a short poem about the sea.",
           "Explain why the sky is blue in one sentence.", "The mechanic helped the baker because",
           "List three fruits:", "Who does the pronoun refer to in: the manager thanked the clerk because he"]
MIXED_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (random, built here), a folder or an alias")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--requests", type=int, default=32, help="requests per round per arm")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--http-arm", action="store_true",
                   help="add a third server, fairsteer without adapters, to separate HTTP from engine cost")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def prepare(model: str, workdir: Path) -> tuple[str, Path]:
    """(model path, adapter file) for the benchmark."""
    if model == "tiny":
        from tiny_models import save_tiny_model

        model = str(save_tiny_model(workdir / "tiny-llama"))
    else:
        from adapters.model_store import resolve_model

        model = resolve_model(model)
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model))
    spec = random_spec(identity, "bench", seed=0, scale_a=0.1, scale_b=0.1, base_model=model, method="constructed")
    return model, io.save(spec, workdir / "bench.safetensors")


@dataclass(frozen=True)
class Arm:
    name: str
    server: ServerProcess
    strengths: tuple[float, ...] | None  # None: send no fairness_strength at all


def cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU time of the server and its children (the engine core) so far."""
    root = psutil.Process(server.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def one_round(arm: Arm, model: str, args: argparse.Namespace, requests: int) -> tuple[float, float]:
    """(generated tokens per wall second, per CPU second of the server) for one round against `arm`."""
    limit = asyncio.Semaphore(args.concurrency)

    async def request(client: httpx.AsyncClient, i: int) -> int:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens,
                "temperature": 0.0, "ignore_eos": True}
        if arm.strengths is not None:
            body["fairness_strength"] = arm.strengths[i % len(arm.strengths)]
        async with limit:
            r = await client.post(arm.server.url + "/v1/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        cpu, start = cpu_seconds(arm.server), time.perf_counter()
        tokens = sum(await asyncio.gather(*(request(client, i) for i in range(requests))))
        wall, cpu = time.perf_counter() - start, cpu_seconds(arm.server) - cpu
    return tokens / wall, tokens / cpu


def main() -> int:
    args = parse_args()
    engine = ("--max-num-seqs", str(max(args.concurrency, 1)))
    with tempfile.TemporaryDirectory(prefix="fairsteer-bench-") as tmp:
        workdir = Path(tmp)
        model, adapter = prepare(args.model, workdir)
        names = ["fairsteer", "plain", *(["http"] if args.http_arm else [])]
        ports = {name: free_port() for name in names}
        argvs = {"fairsteer": fairsteer_argv(model, {"bench": str(adapter)}, ports["fairsteer"], engine_options=engine),
                 "plain": plain_vllm_argv(model, ports["plain"], engine_options=engine),
                 "http": fairsteer_argv(model, {}, ports.get("http", 0), engine_options=engine)}
        servers: dict[str, ServerProcess] = {}
        try:
            for name in names:
                servers[name] = ServerProcess(argvs[name], ports[name], workdir / f"{name}.log").start()
            for server in servers.values():
                server.wait_ready(600)
            arms = [Arm("plain", servers["plain"], None), Arm("mixed", servers["fairsteer"], MIXED_STRENGTHS),
                    Arm("zero", servers["fairsteer"], (0.0,))]
            if args.http_arm:
                arms.append(Arm("http", servers["http"], None))
            results = asyncio.run(measure(model, args, arms))
        finally:
            for server in servers.values():
                server.stop()
    report(results, args)
    return 0


async def measure(model: str, args: argparse.Namespace, arms: list[Arm]) -> dict[str, dict[str, list[float]]]:
    for arm in arms:  # warm-up: first requests pay one-off costs
        await one_round(arm, model, args, args.concurrency)
    results = {arm.name: {"wall": [], "cpu": []} for arm in arms}
    for r in range(args.rounds):
        for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
            wall, cpu = await one_round(arm, model, args, args.requests)
            results[arm.name]["wall"].append(wall)
            results[arm.name]["cpu"].append(cpu)
        print(f"round {r + 1}: " + "  ".join(f"{a.name} {results[a.name]['wall'][-1]:7.0f} tok/s "
                                           f"{results[a.name]['cpu'][-1]:7.0f} tok/cpu-s" for a in arms), flush=True)
    return results


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    median = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
    print(f"\nmodel {args.model}: {args.rounds} rounds x {args.requests} requests x {args.max_tokens} tokens, "
          f"concurrency {args.concurrency}; medians over rounds")
    for name, m in median.items():
        print(f"  {name:6s} {m['wall']:8.1f} tok/s (wall)   {m['cpu']:8.1f} tok per CPU-second of the server")
    # Paired: each round's ratio to plain in the same round (close in time, so under the same load),
    # then the median over rounds.
    ratios = {f"{name}/plain ({kind})": statistics.median(x / y for x, y in zip(r[kind], results["plain"][kind]))
              for name, r in results.items() if name != "plain" for kind in ("wall", "cpu")}
    for key, value in ratios.items():
        print(f"  {key:22s} {value:.3f}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"model": args.model, "settings": settings, "rounds": results,
                                         "median": median, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
