"""Do the server's per-group output metrics move with `fairness_strength`? Generation, end to end.

    python bench/group_rates.py --model smollm2-135m-instruct \\
        [--adapter adapters/shipped/smollm2-135m-instruct-dso.safetensors] [--prompts 360] [--seed 0]

Starts `fairsteer serve` on 127.0.0.1, sends the held-out continuation prompts (`trainer.continuation`,
the evaluation side of the split) to /v1/completions at each strength, sampled (temperature 1, fixed
seeds, 16 tokens), then reads `fairsteer_group_completions_total` from /metrics: per strength, how many
completions mention a male or a female word. It also scores each completion by its first gendered word
(he/him/his/himself vs she/her/hers/herself) and prints the generation-level Per-Occupation Bias,
|P(male) − P(female)| per occupation averaged, with a bootstrap 95% interval. Stops the server it started.
"""

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

from server.launch import ServerProcess, fairsteer_argv, free_port
from trainer import continuation

MALE, FEMALE = {w.lower() for w in continuation.MALE_WORDS}, {w.lower() for w in continuation.FEMALE_WORDS}
WORD = re.compile(r"[A-Za-z]+")


def first_gender(text: str) -> str | None:
    for word in WORD.findall(text.lower()):
        if word in MALE:
            return "male"
        if word in FEMALE:
            return "female"
    return None


def generation_bias(rows: list[tuple[str, str | None]], seed: int = 0) -> dict:
    """Per-Occupation Bias from (occupation, first gender) pairs, with a bootstrap 95% interval."""
    by_occ: dict[str, list[float]] = {}
    for occ, gender in rows:
        if gender is not None:
            by_occ.setdefault(occ, []).append(1.0 if gender == "male" else -1.0)
    groups = [np.array(v) for v in by_occ.values()]
    rng = np.random.default_rng(seed)
    boot = [np.mean([abs(rng.choice(g, len(g)).mean()) for g in groups]) for _ in range(1000)]
    return {"per_occupation_bias": float(np.mean([abs(g.mean()) for g in groups])),
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "gendered_completions": sum(len(g) for g in groups), "male_share": float(
                np.mean(np.concatenate(groups) > 0))}


def group_counts(metrics_text: str, strength_label: str) -> dict[str, float]:
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("fairsteer_group_completions_total{") and f'strength="{strength_label}"' in line:
            group = re.search(r'group="([^"]+)"', line).group(1)
            out[group] = out.get(group, 0) + float(line.rsplit(" ", 1)[1])
    return out


async def complete_all(url: str, model: str, items, strength: float, seed: int, concurrency: int = 8):
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def one(k, item):
            async with sem:
                body = {"model": model, "prompt": item.prompt, "max_tokens": 16, "temperature": 1.0,
                        "seed": seed + k, "fairness_strength": strength}
                r = await client.post("/v1/completions", json=body)
                r.raise_for_status()
                return item.occupation, r.json()["choices"][0]["text"]
        return await asyncio.gather(*(one(k, item) for k, item in enumerate(items)))


def main() -> int:
    from adapters.model_store import resolve_model
    from server.group_metrics import strength_bucket

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=str(Path(__file__).resolve().parents[1] / "adapters" / "shipped"
                                                 / "smollm2-135m-instruct-dso.safetensors"))
    parser.add_argument("--strengths", default="0,0.5,1")
    parser.add_argument("--prompts", type=int, default=360, help="held-out continuation prompts per strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    model = str(resolve_model(args.model))
    items = continuation.split(continuation.generate(), 0, args.prompts, args.seed).eval_ambiguous
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    results = {}
    with ServerProcess(fairsteer_argv(model, {"fair": args.adapter}, port), port, log) as server:
        server.wait_ready()
        served = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        for strength in [float(s) for s in args.strengths.split(",")]:
            texts = asyncio.run(complete_all(server.url, served, items, strength, args.seed))
            counts = group_counts(httpx.get(f"{server.url}/metrics").text, strength_bucket(strength))
            bias = generation_bias([(occ, first_gender(t)) for occ, t in texts], args.seed)
            results[strength] = {"metrics_group_completions": counts, **bias, "completions": len(texts)}
            print(f"ω={strength:g}: /metrics completions mentioning male {counts.get('male', 0):.0f}, female "
                  f"{counts.get('female', 0):.0f} of {len(texts)}; first-gendered-word Per-Occupation Bias "
                  f"{bias['per_occupation_bias']:.3f} [{bias['ci95'][0]:.3f}, {bias['ci95'][1]:.3f}] over "
                  f"{bias['gendered_completions']} gendered completions, male share {bias['male_share']:.2f}",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "adapter": args.adapter, "prompts": len(items),
                                              "seed": args.seed, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
