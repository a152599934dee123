"""Constants and request helpers of the parallel-engine tests (fixtures are in conftest.py)."""

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

from adapters import io
from bench.load_test import Job, client_for, make_jobs, run_load, solo_runs

ADMIN_KEY = "dist-admin-key-0123456789"
# 256 tokens of context bound every generation; 64 MiB of KV cache is plenty for them.
ENGINE = ("--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "256", "--max-num-seqs", "8")
PINNED = {"VLLM_CPU_OMP_THREADS_BIND": "0|1", "OMP_NUM_THREADS": "1"}  # one core per worker

PROMPTS = ["The doctor called the nurse because", "Hello world!", "The quick brown fox jumps over",
           "The mechanic helped the baker", "The capital of France is", "Who does the pronoun refer to?"]
# (prompt, adapter, strength): greedy, 16 tokens each; the adapter is None for "no steering field".
REFERENCE = [(p, a, s) for p in PROMPTS for a, s in ((None, None), ("A", 0.0), ("A", 0.5), ("A", 1.0),
                                                     ("B", 1.0))]
MAX_TOKENS = 16


@dataclass(frozen=True)
class Answer:
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]   # of each chosen token
    version: str | None           # x-fairsteer-version


def body(model: str, prompt: str, adapter: str | None, strength: float | None) -> dict:
    payload = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
               "ignore_eos": True, "return_token_ids": True, "logprobs": 1}
    if strength is not None:
        payload["fairness_strength"] = strength
    if adapter is not None:
        payload["steering"] = adapter
    return payload


async def ask(client: httpx.AsyncClient, url: str, model: str, request) -> Answer:
    r = await client.post(url + "/v1/completions", json=body(model, *request), timeout=300)
    assert r.status_code == 200, f"{request}: HTTP {r.status_code} {r.text[:300]}"
    choice = r.json()["choices"][0]
    return Answer(tuple(choice["token_ids"]), tuple(choice["logprobs"]["token_logprobs"]),
                  r.headers.get("x-fairsteer-version"))


def answers(url: str, model: str, requests, batched: bool) -> list[Answer]:
    """Answers to `requests`: all in flight at once (batched) or one after another (solo)."""
    async def run():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=len(requests) + 2)) as client:
            if batched:
                return list(await asyncio.gather(*(ask(client, url, model, r) for r in requests)))
            return [await ask(client, url, model, r) for r in requests]

    return asyncio.run(run())


def adapter_table(folder: Path) -> dict[str, str]:
    return {"A": str(folder / "A.safetensors"), "B": str(folder / "B.safetensors")}


def admin(server, method: str, name: str = "", **json) -> httpx.Response:
    return httpx.request(method, f"{server.url}/v1/admin/adapters{'/' + name if name else ''}",
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}, json=json or None, timeout=120)


def check_replace_under_load(server, model: str, folder: Path, jobs: int, seed: int = 3) -> None:
    """`hot` flips between A's and B's file while greedy requests are in flight and `extra` is loaded and
    unloaded (12 admin calls): all succeed (the server checks every worker after each write), every
    greedy answer equals the solo answer of the version its response names, both versions served."""
    versions = {n: io.load(folder / f"{n}.safetensors").version for n in ("A", "B")}
    assert admin(server, "PUT", "hot", file="A.safetensors").status_code == 200
    load = [j for j in make_jobs(jobs, ["hot"], seed=seed) if j.adapter == "hot" and not j.hang_up]
    load *= 4  # long enough to overlap all 12 changes on a fast machine too (one pass took 1.4 s)

    async def references():
        table = {}
        async with client_for(server.url, None, 4) as client:
            for source in ("A", "B"):
                alike = {j: Job(j.endpoint, j.prompt, source, j.strength, False, 1, True, False) for j in load}
                solo = await solo_runs(client, model, list(alike.values()))
                for j, same in alike.items():
                    if same.solo_key() in solo:
                        table[(j.solo_key(), versions[source])] = solo[same.solo_key()]
        return table

    changes = []

    async def admin_calls():
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            for i in range(4):
                await asyncio.sleep(0.1)
                for method, name, file in (("PUT", "hot", ("B", "A")[i % 2] + ".safetensors"),
                                           ("PUT", "extra", "B.safetensors"), ("DELETE", "extra", None)):
                    r = await c.request(method, f"/v1/admin/adapters/{name}", json={"file": file} if file else None)
                    changes.append((r.status_code, r.text))

    reference = asyncio.run(references())
    report = asyncio.run(run_load(server.url, model, load, 8, reference=reference, during=admin_calls))
    print(report.summary())
    assert [s for s, _ in changes] == [200] * 12, changes
    assert not report.errors, [r.error for r in report.errors[:5]]
    assert not report.mismatches, report.mismatches[:3]
    assert {r.version for r in report.results} == set(versions.values()), "both versions must have served"
    slots = admin(server, "GET").json()["data"]
    assert all(s["in_flight"] == 0 for s in slots), f"requests still counted in flight: {slots}"
