"""The server's per-group output counters move with `fairness_strength` on the real model and adapter.

Slow (about 2 minutes): `fairsteer serve` with SmolLM2-135M-Instruct and the shipped adapter on
127.0.0.1; 240 held-out continuation prompts, greedy, in phases by the occupation's BLS majority.
From `fairsteer_group_completions_total` alone (what the dashboard plots), the share of completions
mentioning a female word differs between male- and female-majority occupations unsteered, and the
adapter at strength 1 closes most of that gap (bench/group_rates.py is the sampled, larger version).
"""

import asyncio
import tempfile
from pathlib import Path

import httpx
import pytest
from server_process import ServerProcess, fairsteer_argv, free_port

from bench.group_rates import SHIPPED, complete_all, group_completions
from trainer import continuation
from trainer.occupations import majority_is_female

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_group_counters_follow_the_fairness_strength(smollm2_path):
    items = continuation.split(continuation.generate(), 0, 240).eval_ambiguous
    groups = {"male": [i for i in items if not majority_is_female(i.occupation)],
              "female": [i for i in items if majority_is_female(i.occupation)]}
    port = free_port()
    log = Path(tempfile.mkdtemp()) / "server.log"
    share = {}
    with ServerProcess(fairsteer_argv(smollm2_path, {"dso": str(SHIPPED)}, port), port, log) as server:
        server.wait_ready()
        served = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        for strength in (0.0, 1.0):
            for majority, phase in groups.items():
                before = group_completions(httpx.get(f"{server.url}/metrics").text)
                asyncio.run(complete_all(server.url, served, phase, strength, seed=0, temperature=0.0))
                after = group_completions(httpx.get(f"{server.url}/metrics").text)
                male, female = (after.get(g, 0) - before.get(g, 0) for g in ("male", "female"))
                assert male + female > 40, f"too few gendered completions to compare ({male}, {female})"
                share[strength, majority] = female / (male + female)
    print("female share of gendered completions (strength, occupation majority):", share)
    base_gap = share[0.0, "female"] - share[0.0, "male"]
    steered_gap = share[1.0, "female"] - share[1.0, "male"]
    assert base_gap > 0.1, f"unsteered, female-majority occupations get more female words: {share}"
    assert abs(steered_gap) < 0.5 * base_gap, f"strength 1 must close most of the gap: {share}"
