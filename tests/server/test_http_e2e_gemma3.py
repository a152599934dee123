"""End to end on the real Gemma 3 270M (base): `fairsteer model pull gemma-3-270m`, then `fairsteer serve`
with a random adapter built for it, against plain vLLM on the same folder (the honest reference).

This is the Gemma3 path of the plugin on a real checkpoint (sandwich norms, 262k vocabulary, sliding
window layers), where tests/server/test_engine_architectures.py only has a tiny random Gemma3.
Slow: the two servers start side by side (about a minute and a half on this 2-core machine).
"""

import asyncio
from dataclasses import replace

import httpx
import openai
import pytest
from server_process import ServerProcess, fairsteer_argv, free_port, plain_vllm_argv
from transformers import AutoConfig

from adapters import io
from adapters.model_store import license_notice
from adapters.spec import ModelIdentity, random_spec

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

PROMPTS = ["The nurse said that", "My neighbour, a carpenter, told me that", "The capital of France is",
           "Once upon a time,"]
GREEDY = {"temperature": 0.0, "max_tokens": 8}
# A small engine: the prompts and answers above are short, and each server holds 1 GB of fp32 weights.
ENGINE = ("--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "256")


@pytest.fixture(scope="module")
def servers(gemma3_path, tmp_path_factory):
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(gemma3_path))
    spec = random_spec(identity, "rand", seed=0, scale_a=0.2, scale_b=0.5, base_model="gemma-3-270m",
                       method="constructed")
    spec = replace(spec, meta=replace(spec.meta, license_notice=license_notice(gemma3_path)))  # as training does
    adapter = io.save(spec, tmp_path_factory.mktemp("gemma3") / "rand.safetensors")
    logs = tmp_path_factory.mktemp("gemma3-logs")
    fs_port, plain_port = free_port(), free_port()
    fs = ServerProcess(fairsteer_argv(gemma3_path, {"rand": str(adapter)}, fs_port, engine_options=ENGINE),
                       fs_port, logs / "fairsteer.log")
    plain = ServerProcess(plain_vllm_argv(gemma3_path, plain_port, engine_options=ENGINE), plain_port,
                          logs / "plain.log")
    try:
        fs.start(), plain.start()  # both start-ups overlap
        fs.wait_ready(), plain.wait_ready()
        yield fs, plain, spec.version
    finally:
        fs.stop(), plain.stop()


def completion_ids(client, model, prompt, **extra):
    r = client.completions.create(model=model, prompt=prompt, **GREEDY,
                                  extra_body={"return_token_ids": True, **extra})
    return r.choices[0].token_ids, r.model_extra.get("fairsteer")


def test_gemma3_strength_zero_is_plain_vllm_and_strength_one_steers(servers, gemma3_path):
    fs, plain, version = servers
    fs_client = openai.OpenAI(base_url=fs.url + "/v1", api_key="unused", max_retries=0)
    plain_client = openai.OpenAI(base_url=plain.url + "/v1", api_key="unused", max_retries=0)
    reference = [completion_ids(plain_client, gemma3_path, p)[0] for p in PROMPTS]
    assert all(len(ids) == GREEDY["max_tokens"] for ids in reference), "plain vLLM must answer every prompt"

    zero = [completion_ids(fs_client, gemma3_path, p, fairness_strength=0.0) for p in PROMPTS]
    assert [ids for ids, _ in zero] == reference, "strength 0 must give plain vLLM's greedy tokens"
    assert zero[0][1] == {"adapter": "rand", "version": version, "strength": 0.0}

    one = [completion_ids(fs_client, gemma3_path, p, fairness_strength=1.0)[0] for p in PROMPTS]
    changed = sum(a != b for a, b in zip(one, reference))
    assert changed == len(PROMPTS), f"strength 1 must change every answer; it changed {changed} of {len(PROMPTS)}"

    (listed,) = httpx.get(fs.url + "/v1/steerings", timeout=10).json()["data"]
    assert "subject to the Gemma Terms of Use" in listed["license_notice"], "users of the adapter are told its terms"


def test_gemma3_mixed_strengths_in_one_batch_equal_each_alone(servers, gemma3_path):
    fs, _, _ = servers
    cases = [(p, s) for p in PROMPTS for s in (0.0, 0.5, 1.0)]

    async def run(client, prompt, strength):
        r = await client.completions.create(model=gemma3_path, prompt=prompt, **GREEDY,
                                            extra_body={"return_token_ids": True, "fairness_strength": strength})
        return r.choices[0].token_ids

    async def main():
        client = openai.AsyncOpenAI(base_url=fs.url + "/v1", api_key="unused", max_retries=0)
        alone = [await run(client, p, s) for p, s in cases]
        together = await asyncio.gather(*(run(client, p, s) for p, s in cases))
        return alone, together

    alone, together = asyncio.run(main())
    mismatched = [case for case, x, y in zip(cases, alone, together) if x != y]
    assert not mismatched, f"batched output differs from solo for {mismatched}"
    assert len({tuple(ids) for ids in alone}) > len(PROMPTS), "the strengths must actually differ in output"
