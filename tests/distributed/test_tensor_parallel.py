"""`fairsteer serve -- --tensor-parallel-size 2` on vLLM's CPU build: two workers, one core each.

Servers (tiny 4-layer Llama): plain vLLM at TP=2 (the reference at the same parallel setting), then
fairsteer at TP=2 with --adapter-dir (multiprocessing executor, fairsteer's CPU default for more than one
worker), and the session's single-worker fairsteer answers (tp1_reference).

Tolerance TP=2 vs TP=1: the two ranks each compute half of every attention and MLP output and sum them
(an all-reduce), so fp32 sums are rounded in another order than on one worker: about 1e-7 relative per
sum. Greedy tokens must be identical for all 16 tokens of every request (no near-tie in these prompts),
and each chosen token's log-probability within 1e-4 (measured: a few 1e-6 at most).
"""

import os
import signal
import time

import psutil
import pytest
from distributed.helpers import (
    MAX_TOKENS,
    PROMPTS,
    REFERENCE,
    adapter_table,
    answers,
    check_replace_under_load,
)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TP2 = ("--tensor-parallel-size", "2")
LOGPROB_TOLERANCE = 1e-4  # see the module docstring


@pytest.fixture(scope="module")
def plain_tp2(start, dist_model):
    server = start("plain", dist_model, engine=TP2 + ("--distributed-executor-backend", "mp"))
    try:
        return answers(server.url, dist_model, [(p, None, None) for p in PROMPTS], batched=False)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(start, dist_model, dist_adapters, plain_tp2):  # after the plain server has stopped
    server = start("fairsteer", dist_model, engine=TP2, adapters=adapter_table(dist_adapters),
                   options=("--adapter-dir", str(dist_adapters), "--max-adapters", "4"))
    yield server
    server.stop()  # idle engine workers still poll: free the cores for the next module


def test_the_engine_runs_two_tensor_parallel_workers(server):
    log = server.log_path.read_text(errors="replace")
    assert "Worker_TP1" in log, "the server must run two tensor-parallel workers"


def test_strength_zero_equals_plain_vllm_at_tp2(server, dist_model, plain_tp2):
    for adapter, strength in ((None, None), ("A", 0.0), ("B", 0)):
        got = answers(server.url, dist_model, [(p, adapter, strength) for p in PROMPTS], batched=False)
        assert [g.tokens for g in got] == [p.tokens for p in plain_tp2], \
            f"strength 0 ({adapter}, {strength}) must reproduce plain vLLM at TP=2 token for token"


def test_a_mixed_strength_batch_equals_each_request_alone_at_tp2(server, dist_model):
    batched = answers(server.url, dist_model, REFERENCE, batched=True)
    solo = answers(server.url, dist_model, REFERENCE, batched=False)
    for request, b, s in zip(REFERENCE, batched, solo):
        assert b.tokens == s.tokens, f"{request} in a mixed batch must equal the same request alone"
    assert len({b.tokens for b in batched}) > len(PROMPTS) * 2, "the settings must produce different outputs"


def test_greedy_outputs_at_tp2_agree_with_one_worker(server, dist_model, tp1_reference):
    got = answers(server.url, dist_model, REFERENCE, batched=False)
    worst = 0.0
    for request, tp2, tp1 in zip(REFERENCE, got, tp1_reference):
        assert tp2.tokens == tp1.tokens, f"{request}: TP=2 {tp2.tokens} differs from TP=1 {tp1.tokens}"
        assert len(tp2.logprobs) == MAX_TOKENS
        worst = max([worst, *(abs(x - y) for x, y in zip(tp2.logprobs, tp1.logprobs))])
    print(f"largest |log p(TP=2) - log p(TP=1)| over {len(REFERENCE)} x {MAX_TOKENS} tokens: {worst:.2e}")
    assert worst <= LOGPROB_TOLERANCE, f"log-probabilities differ by {worst:.2e} > {LOGPROB_TOLERANCE}"


def test_load_replace_and_unload_at_tp2_reach_both_workers_under_load(server, dist_model, dist_adapters):
    """`hot` flips between A's and B's file while greedy requests are in flight and `extra` is loaded
    and unloaded: every write is checked in both workers by the server (a disagreement is a 500), and
    every greedy answer equals the solo answer of the version its response names."""
    check_replace_under_load(server, dist_model, dist_adapters, jobs=60)


def test_sigterm_stops_the_server_and_both_workers(server):
    """Last in the module: SIGTERM, then no process of the server's group (API, engine core, two
    workers) may be left. vLLM's shutdown is asynchronous: a worker notices its parent left by polling."""
    group = os.getpgid(server.proc.pid)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(90) is not None
    left = []
    while time.monotonic() - start < 120:
        left = [p for p in psutil.process_iter(["pid"]) if _group(p) == group]
        if not left:
            break
        time.sleep(0.5)
    names = [p.name() for p in left if p.is_running()]
    print(f"server and workers gone {time.monotonic() - start:.1f} s after SIGTERM")
    assert not names, f"processes left {time.monotonic() - start:.0f} s after SIGTERM: {names}"


def _group(proc) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None
