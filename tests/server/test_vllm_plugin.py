"""The fairsteer vLLM plugin inside a real vLLM CPU engine (offline `LLM` API, tiny random Llama).

Two engines per run (about 15 s each): a plain one for reference outputs, then a steered one with two
adapters ("boost": raises one token's logit at the final norm; "mix": random a, b at every site).
Prefix caching stays on: every request carries a `cache_salt` naming its steering setting, as the HTTP
layer does (`test_prefix_cache_needs_a_salt_per_steering_setting` shows why).
"""

import itertools
import math

import pytest
from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError

from server.engine_boundary import INTERNAL_ADAPTER_KEY as ADAPTER_KEY
from server.engine_boundary import INTERNAL_STRENGTH_KEY as STRENGTH_KEY
from server.vllm_plugin import offline_engine_kwargs

pytestmark = pytest.mark.vllm

PROMPTS = [
    "The doctor called the nurse because",
    "Hello world!",
    "The quick brown fox jumps over",
    "Who does the pronoun refer to? Answer with exactly one of: the doctor, the nurse.",
    "The mechanic helped the baker",
    "The capital of France is",
]
# Small engine: 4 sequences at most, so a batch of 12 requests keeps joining and leaving.
ENGINE = {"enforce_eager": True, "distributed_executor_backend": "uni", "kv_cache_memory_bytes": 64 << 20,
          "max_model_len": 512, "dtype": "float32", "seed": 0, "max_num_seqs": 4}


def start_llm(model, **kwargs) -> LLM:
    return LLM(model=str(model), **ENGINE, **kwargs)


def stop_llm(llm: LLM) -> None:
    llm.llm_engine.engine_core.shutdown()


def steering(adapter: str | None, strength: float | None) -> dict | None:
    if adapter is None and strength is None:
        return None
    return {ADAPTER_KEY: adapter, STRENGTH_KEY: strength}


def greedy(llm: LLM, requests: list[tuple[str, dict | None, int]]) -> list[list[int]]:
    """Token ids of greedy completions for (prompt, extra_args, max_tokens), submitted as one batch."""
    prompts = [{"prompt": p, "cache_salt": repr(sorted((extra or {}).items()))} for p, extra, _ in requests]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, extra_args=extra)
              for _, extra, n in requests]
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def plain_outputs(tiny_llama) -> list[list[int]]:
    llm = start_llm(tiny_llama)
    try:
        return greedy(llm, [(p, None, 16) for p in PROMPTS])
    finally:
        stop_llm(llm)


@pytest.fixture(scope="module")
def steered(tiny_llama, adapter_table, plain_outputs) -> LLM:  # after the plain engine has stopped
    llm = start_llm(tiny_llama, max_logprobs=8, **offline_engine_kwargs(str(tiny_llama), adapter_table))
    yield llm
    stop_llm(llm)


def test_strength_zero_equals_plain_vllm(steered, plain_outputs):
    for extra in (None, steering("mix", 0.0), steering("boost", 0), steering("mix", None)):
        got = greedy(steered, [(p, extra, 16) for p in PROMPTS])
        assert got == plain_outputs, f"strength 0 ({extra}) must reproduce plain vLLM token for token"


def test_strength_changes_output(steered, plain_outputs, boost_adapter):
    mixed = greedy(steered, [(p, steering("mix", 1.0), 16) for p in PROMPTS])
    assert sum(m != p for m, p in zip(mixed, plain_outputs)) >= len(PROMPTS) - 1, "mix at 1 must steer"
    boosted = greedy(steered, [(p, steering("boost", 1.0), 4) for p in PROMPTS])
    assert all(out == [boost_adapter.target_token] * 4 for out in boosted), "boost at 1 must emit its token"


def test_target_logprob_rises_monotonically_with_strength(steered, boost_adapter):
    target = boost_adapter.target_token
    strengths = (0.0, 0.25, 0.5, 1.0)
    for prompt in PROMPTS[:3]:
        inputs = [{"prompt": prompt, "cache_salt": f"boost-{s}"} for s in strengths]
        params = [SamplingParams(temperature=0, max_tokens=1, logprob_token_ids=[target],
                                 extra_args=steering("boost", s)) for s in strengths]
        outs = steered.generate(inputs, params, use_tqdm=False)
        logprobs = [o.outputs[0].logprobs[0][target].logprob for o in outs]
        assert all(math.isfinite(x) for x in logprobs)
        assert all(lo < hi for lo, hi in itertools.pairwise(logprobs)), (
            f"log P(target) must rise with strength {strengths}: {logprobs}")


def test_batched_mixed_strengths_and_adapters_equal_solo(steered):
    settings = [steering("mix", 1.0), None, steering("boost", 0.25), steering("mix", 0.3),
                steering("mix", 0.0), steering("boost", 0.05), steering("mix", 0.7), steering("boost", 1.0)]
    # 12 requests, max_num_seqs 4, different lengths: requests join and leave the batch mid-flight.
    requests = [(PROMPTS[i % len(PROMPTS)], settings[i % len(settings)], 3 + (5 * i) % 14) for i in range(12)]
    batched = greedy(steered, requests)
    solo = [greedy(steered, [request])[0] for request in requests]
    for request, b, s in zip(requests, batched, solo):
        assert b == s, f"request {request} in a mixed batch must equal the same request alone"
    assert len({tuple(b) for b in batched}) > 6, "the settings must actually produce different outputs"


def test_prefix_cache_needs_a_salt_per_steering_setting(steered):
    """vLLM's block hashes ignore extra_args: without a salt, steered requests reuse unsteered KV."""
    prompt = " ".join(PROMPTS) * 3           # several full KV blocks, so they are cached and reusable
    mix = steering("mix", 1.0)
    params = [SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, extra_args=e) for e in (None, mix)]
    fresh = steered.generate({"prompt": prompt, "cache_salt": "mix-1.0-fresh"}, params[1], use_tqdm=False)
    steered.generate({"prompt": prompt}, params[0], use_tqdm=False)             # fills the unsalted cache
    unsalted = steered.generate({"prompt": prompt}, params[1], use_tqdm=False)
    salted = steered.generate({"prompt": prompt, "cache_salt": "mix-1.0"}, params[1], use_tqdm=False)
    assert salted[0].outputs[0].token_ids == fresh[0].outputs[0].token_ids
    assert unsalted[0].outputs[0].token_ids != fresh[0].outputs[0].token_ids, (
        "expected the documented pitfall (unsalted steered request served from unsteered KV); if vLLM now "
        "hashes extra_args, the salt is merely redundant")


@pytest.mark.parametrize("extra, message", [
    ({ADAPTER_KEY: "nope", STRENGTH_KEY: 0.5}, "not a loaded adapter"),
    ({ADAPTER_KEY: "mix", STRENGTH_KEY: -0.1}, ">= 0"),
    ({ADAPTER_KEY: "mix", STRENGTH_KEY: float("nan")}, "finite"),
    ({ADAPTER_KEY: "mix", STRENGTH_KEY: float("inf")}, "finite"),
    ({ADAPTER_KEY: "mix", STRENGTH_KEY: "0.5"}, "must be a number"),
    ({ADAPTER_KEY: "mix", STRENGTH_KEY: True}, "must be a number"),
    ({STRENGTH_KEY: 0.5}, "needs fairsteer_adapter, a loaded"),
    ({ADAPTER_KEY: 3, STRENGTH_KEY: 0.5}, "must be a string"),
    ({ADAPTER_KEY: "mix", "fairsteer_strenght": 0.5}, "unknown steering field"),
])
def test_malformed_steering_is_refused_and_engine_keeps_serving(steered, plain_outputs, extra, message):
    with pytest.raises(VLLMValidationError, match=message):
        greedy(steered, [(PROMPTS[0], extra, 4)])
    assert greedy(steered, [(PROMPTS[0], None, 16)])[0] == plain_outputs[0]
