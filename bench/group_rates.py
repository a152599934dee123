"""Do the server's per-group output metrics move with `fairness_strength`? Generation, end to end.

    python bench/group_rates.py [--model smollm2-135m-instruct] \\
        [--adapter adapters/shipped/smollm2-135m-instruct-dso.safetensors] [--prompts 720] [--seed 0]

Starts `fairsteer serve` on 127.0.0.1 and sends the held-out continuation prompts (`trainer.continuation`,
the evaluation side of the split) to /v1/completions, sampled (temperature 1, a fixed seed per request,
16 tokens), in phases: per strength, first the prompts about male-majority occupations (BLS), then those
about female-majority ones. Around each phase it reads `fairsteer_group_completions_total` from
/metrics, so each phase's difference is what a dashboard shows for that traffic: how many completions
mention a male and a female word. Unsteered, completions about male-majority occupations mention "he"
words far more often than "she" words and the reverse for female-majority ones; the adapter should bring
both towards parity. It also scores each completion by its first gendered word. Stops its server.
"""

import argparse
import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' server harness
from server_process import ServerProcess, fairsteer_argv, free_port

from trainer import continuation
from trainer.occupations import majority_is_female

MALE, FEMALE = {w.lower() for w in continuation.MALE_WORDS}, {w.lower() for w in continuation.FEMALE_WORDS}
WORD = re.compile(r"[A-Za-z]+")
SHIPPED = Path(__file__).resolve().parents[1] / "adapters" / "shipped" / "smollm2-135m-instruct-dso.safetensors"


def first_gender(text: str) -> str | None:
    for word in WORD.findall(text.lower()):
        if word in MALE:
            return "male"
        if word in FEMALE:
            return "female"
    return None


def group_completions(metrics_text: str) -> dict[str, float]:
    """fairsteer_group_completions_total per group, summed over every other label."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("fairsteer_group_completions_total{"):
            group = re.search(r'group="([^"]+)"', line).group(1)
            out[group] = out.get(group, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def complete_all(url: str, model: str, items, strength: float, seed: int, concurrency: int = 8,
                       temperature: float = 1.0, api_key: str | None = None):
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as client:
        async def one(k, item):
            async with sem:
                body = {"model": model, "prompt": item.prompt, "max_tokens": 16, "temperature": temperature,
                        "seed": seed + k, "fairness_strength": strength}
                r = await client.post("/v1/completions", json=body)
                r.raise_for_status()
                return r.json()["choices"][0]["text"]
        return await asyncio.gather(*(one(k, item) for k, item in enumerate(items)))


def main() -> int:
    from adapters.model_store import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=str(SHIPPED))
    parser.add_argument("--strengths", default="0,0.5,1")
    parser.add_argument("--prompts", type=int, default=720, help="held-out continuation prompts per strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    model = str(resolve_model(args.model))
    items = continuation.split(continuation.generate(), 0, args.prompts, args.seed).eval_ambiguous
    groups = {"male-majority": [i for i in items if not majority_is_female(i.occupation)],
              "female-majority": [i for i in items if majority_is_female(i.occupation)]}
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    rows = []
    with ServerProcess(fairsteer_argv(model, {"fair": args.adapter}, port), port, log) as server:
        server.wait_ready()
        served = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        print(f"{'ω':>4} {'occupations':>16} {'prompts':>8} {'/metrics: male':>15} {'female':>7} "
              f"{'female share':>13} {'first gendered word: female share':>34}")
        for strength in [float(s) for s in args.strengths.split(",")]:
            for label, phase in groups.items():
                before = group_completions(httpx.get(f"{server.url}/metrics").text)
                texts = asyncio.run(complete_all(server.url, served, phase, strength, args.seed))
                after = group_completions(httpx.get(f"{server.url}/metrics").text)
                male, female = (after.get(g, 0) - before.get(g, 0) for g in ("male", "female"))
                firsts = [g for g in map(first_gender, texts) if g]
                row = {"strength": strength, "occupations": label, "prompts": len(texts), "metrics_male": male,
                       "metrics_female": female, "metrics_female_share": female / max(male + female, 1),
                       "first_word_gendered": len(firsts),
                       "first_word_female_share": firsts.count("female") / max(len(firsts), 1)}
                rows.append(row)
                print(f"{strength:>4g} {label:>16} {len(texts):>8} {male:>15.0f} {female:>7.0f} "
                      f"{row['metrics_female_share']:>13.2f} {row['first_word_female_share']:>20.2f} "
                      f"(of {len(firsts)})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "adapter": args.adapter, "seed": args.seed,
                                              "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
