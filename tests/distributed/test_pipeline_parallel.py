"""`fairsteer serve -- --pipeline-parallel-size 2` on vLLM's CPU build: two stages, one core each.

The tiny model has 4 layers: stage 0 holds layers 0-1 (their norms' sites), stage 1 layers 2-3 and the
final norm; each steers only its own sites (models.py skips the `PPMissingLayer` placeholders), and the
second stage reads each token's strength from the same per-row table (the logits processor's
update_state runs in every stage's runner before its forward).

On CPU, vLLM 0.32 runs pipeline parallelism only compiled: an eager second stage fails its first forward
(`assert self.intermediate_tensors is not None` in `sync_and_gather_intermediate_tensors`; its receive
buffers are allocated only by the compile warm-up). fairsteer therefore defaults to compiled mode for
PP > 1 on CPU (settings.parallel_defaults); `test_eager_pipeline_parallel_fails_as_documented` asserts
that failure with an explicit --enforce-eager, so it notices when a vLLM upgrade fixes it.

Tolerance PP=2 vs TP=1: stage 1 receives stage 0's hidden states unchanged (no reduction), but the model
runs compiled here and eager on one worker: inductor may fuse and reorder fp32 arithmetic. Greedy tokens
must be identical; log-probabilities within 1e-4.
"""

import time

import httpx
import pytest
from distributed.helpers import (
    MAX_TOKENS,
    PROMPTS,
    REFERENCE,
    adapter_table,
    admin,
    answers,
    body,
    check_replace_under_load,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PP2 = ("--pipeline-parallel-size", "2")
LOGPROB_TOLERANCE = 1e-4  # see the module docstring
EAGER_PP_ERROR = "assert self.intermediate_tensors is not None"


@pytest.fixture(scope="module")
def plain_pp2(start, dist_model):
    server = start("plain", dist_model, engine=PP2 + ("--distributed-executor-backend", "mp", "--no-enforce-eager"))
    try:
        return answers(server.url, dist_model, [(p, None, None) for p in PROMPTS], batched=False)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(start, dist_model, dist_adapters, plain_pp2):
    server = start("fairsteer", dist_model, engine=PP2, adapters=adapter_table(dist_adapters),
                   options=("--adapter-dir", str(dist_adapters), "--max-adapters", "4"))
    yield server
    server.stop()  # idle engine workers still poll: free the cores for the next module


def test_each_stage_steers_its_own_layers(server):
    log = server.log_path.read_text(errors="replace")
    assert "Worker_PP1" in log and "enforce_eager=False" in log, "two compiled pipeline stages expected"


def test_strength_zero_equals_plain_vllm_at_pp2(server, dist_model, plain_pp2):
    for adapter, strength in ((None, None), ("A", 0.0)):
        got = answers(server.url, dist_model, [(p, adapter, strength) for p in PROMPTS], batched=False)
        assert [g.tokens for g in got] == [p.tokens for p in plain_pp2], \
            f"strength 0 ({adapter}, {strength}) must reproduce plain vLLM at PP=2 token for token"


def test_a_mixed_strength_batch_equals_each_request_alone_at_pp2(server, dist_model):
    batched = answers(server.url, dist_model, REFERENCE, batched=True)
    solo = answers(server.url, dist_model, REFERENCE, batched=False)
    for request, b, s in zip(REFERENCE, batched, solo):
        assert b.tokens == s.tokens, f"{request} in a mixed batch must equal the same request alone"


def test_greedy_outputs_at_pp2_agree_with_one_worker(server, dist_model, tp1_reference):
    got = answers(server.url, dist_model, REFERENCE, batched=False)
    worst = 0.0
    for request, pp2, tp1 in zip(REFERENCE, got, tp1_reference):
        assert pp2.tokens == tp1.tokens, f"{request}: PP=2 {pp2.tokens} differs from TP=1 {tp1.tokens}"
        assert len(pp2.logprobs) == MAX_TOKENS
        worst = max([worst, *(abs(x - y) for x, y in zip(pp2.logprobs, tp1.logprobs))])
    print(f"largest |log p(PP=2) - log p(TP=1)| over {len(REFERENCE)} x {MAX_TOKENS} tokens: {worst:.2e}")
    assert worst <= LOGPROB_TOLERANCE, f"log-probabilities differ by {worst:.2e} > {LOGPROB_TOLERANCE}"


def test_run_time_adapters_reach_both_stages(server, dist_model, tp1_reference):
    """B loaded at run time as `late` steers exactly like B loaded at start-up on one worker: both
    stages got their half of its rows (stage 1 alone would change only the last layers)."""
    assert admin(server, "PUT", "late", file="B.safetensors").status_code == 200
    want = [ref for ref, (_, adapter, strength) in zip(tp1_reference, REFERENCE) if (adapter, strength) == ("B", 1.0)]
    got = answers(server.url, dist_model, [(p, "late", 1.0) for p in PROMPTS], batched=True)
    assert [g.tokens for g in got] == [w.tokens for w in want]
    assert admin(server, "DELETE", "late").status_code == 200


def test_load_replace_and_unload_at_pp2_reach_both_stages_under_load(server, dist_model, dist_adapters):
    check_replace_under_load(server, dist_model, dist_adapters, jobs=60, seed=4)


def test_eager_pipeline_parallel_fails_as_documented(start, dist_model, dist_adapters, server):
    """vLLM 0.32's CPU runner: an eager second stage fails its first forward. Started last in the module
    (after the compiled server is stopped), one request, then the engine is dead."""
    server.stop()
    eager = start("fairsteer", dist_model, engine=PP2 + ("--enforce-eager",), adapters=adapter_table(dist_adapters))
    try:
        r = httpx.post(eager.url + "/v1/completions", json=body(dist_model, "Hello world!", "A", 1.0), timeout=120)
        status = r.status_code
    except httpx.HTTPError as exc:
        status = repr(exc)
    deadline = time.monotonic() + 60
    while EAGER_PP_ERROR not in eager.log_path.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(1)
    log = eager.log_path.read_text(errors="replace")
    if status == 200 and EAGER_PP_ERROR not in log:
        pytest.fail("eager pipeline parallelism works now: drop the compiled default for PP in "
                    "server/settings.py parallel_defaults, docs/distributed.md's note and this test")
    assert status != 200, "a request must not succeed on a dead engine"
    assert EAGER_PP_ERROR in log, f"another failure than the documented one:\n{eager.log_tail(60)}"
    print(f"eager PP=2 failed as documented: HTTP {status}; log: {EAGER_PP_ERROR}")
    eager.stop()
