"""The OpenAI-compatible API against real servers: `fairsteer serve` and plain vLLM on the tiny model.

One fairsteer server (adapters "boost" and "mix" from conftest.py) and one plain vLLM server (the honest
reference, same engine options) are started once for this module on 127.0.0.1 and stopped by PID.
Requests go through the official `openai` client unless the raw bytes matter (NaN tokens, headers).
"""

import asyncio
import itertools
import json

import httpx
import openai
import pytest
from server_process import ServerProcess, fairsteer_argv, free_port, plain_vllm_argv

from adapters import io

pytestmark = pytest.mark.vllm

# Small engine: the tiny model needs ~1 KB of KV per token; 512 tokens hold the longest prompt below.
ENGINE = ("--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "512")
PROMPTS = ["The doctor called the nurse because", "Who does the pronoun refer to?", "Hello world! 0123",
           "The mechanic helped the baker"]
GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture(scope="module")
def servers(tiny_llama, adapter_table, tmp_path_factory):
    logs = tmp_path_factory.mktemp("http-logs")
    fs_port, plain_port = free_port(), free_port()
    fs = ServerProcess(fairsteer_argv(str(tiny_llama), adapter_table, fs_port, engine_options=ENGINE),
                       fs_port, logs / "fairsteer.log")
    plain = ServerProcess(plain_vllm_argv(str(tiny_llama), plain_port, engine_options=ENGINE),
                          plain_port, logs / "plain.log")
    try:
        fs.start(), plain.start()  # both start-ups overlap
        fs.wait_ready(), plain.wait_ready()
        yield fs, plain
    finally:
        fs.stop(), plain.stop()


@pytest.fixture(scope="module")
def fairsteer(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(fairsteer):
    return openai.OpenAI(base_url=fairsteer.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model(tiny_llama):
    return str(tiny_llama)


def token_ids(client, model, prompt, **extra):
    r = client.completions.create(model=model, prompt=prompt, **GREEDY, extra_body={"return_token_ids": True, **extra})
    return r.choices[0].token_ids


def chat_ids(client, model, prompt, **extra):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **GREEDY,
                                       extra_body={"return_token_ids": True, **extra})
    return r.choices[0].token_ids


def test_strength_zero_equals_plain_vllm_token_for_token(servers, client, model):
    plain = openai.OpenAI(base_url=servers[1].url + "/v1", api_key="unused", max_retries=0)
    for prompt in PROMPTS:
        reference = token_ids(plain, model, prompt)
        assert token_ids(client, model, prompt) == reference, "default (strength 0) must equal plain vLLM"
        assert token_ids(client, model, prompt, fairness_strength=0) == reference
        assert token_ids(client, model, prompt, fairness_strength=0.0, steering="mix") == reference
        assert chat_ids(client, model, prompt, fairness_strength=0) == chat_ids(plain, model, prompt)


def test_positive_strength_changes_the_output(client, model):
    for prompt in PROMPTS:
        base = token_ids(client, model, prompt)
        assert token_ids(client, model, prompt, fairness_strength=1.0, steering="mix") != base, \
            "a request at strength 1 must be served steered"


def test_target_logprob_rises_monotonically_with_strength(client, model, boost_adapter):
    """The boost adapter raises one token's logit by ~10·ω: its log-probability must grow with ω."""
    prompt = [5, 6, 7, 8, boost_adapter.target_token]
    logprobs = []
    for strength in (0.0, 0.25, 0.5, 1.0):
        r = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0.0,
                                      extra_body={"prompt_logprobs": 0, "fairness_strength": strength,
                                                  "steering": "boost"})
        last = r.choices[0].model_extra["prompt_logprobs"][-1]  # {token_id: {"logprob": ...}}
        logprobs.append(last[str(boost_adapter.target_token)]["logprob"])
    assert all(a < b for a, b in itertools.pairwise(logprobs)), f"not monotone in strength: {logprobs}"


def test_applied_steering_is_stated_in_body_headers_and_first_chunk(client, model, adapter_table):
    version = io.load(adapter_table["mix"]).version
    expected = {"adapter": "mix", "version": version, "strength": 0.7}
    raw = client.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=2,
                                                      extra_body={"fairness_strength": 0.7, "steering": "mix"})
    assert raw.parse().model_extra["fairsteer"] == expected
    assert (raw.headers["x-fairsteer-adapter"], raw.headers["x-fairsteer-version"],
            raw.headers["x-fairsteer-strength"]) == ("mix", version, "0.7")
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                          extra_body={"fairness_strength": 0.7, "steering": "mix"})
    assert chat.model_extra["fairsteer"] == expected
    for stream in (client.completions.create(model=model, prompt="Hi", max_tokens=3, stream=True,
                                             extra_body={"fairness_strength": 0.7, "steering": "mix"}),
                   client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=3, stream=True,
                                                  extra_body={"vllm_xargs": {"fairness_strength": 0.7,
                                                                             "steering": "mix"}})):
        chunks = list(stream)
        assert chunks[0].model_extra["fairsteer"] == expected, "the first stream chunk states the steering"
        assert all("fairsteer" not in c.model_extra for c in chunks[1:])


def test_concurrent_mixed_requests_equal_each_alone(fairsteer, model):
    """Mixed strengths and adapters, streaming and not, share batches: each must equal its solo run."""
    settings = [(None, 0.0), ("boost", 0.5), ("mix", 1.0), ("mix", 0.3), ("boost", 1.0), ("mix", 0.0)]
    cases = [(p, a, s, i % 2 == 0) for i, (p, (a, s)) in
             enumerate((p, st) for p in PROMPTS for st in settings)]

    async def run(aclient, prompt, adapter, strength, stream):
        extra = {"return_token_ids": True, "fairness_strength": strength, **({"steering": adapter} if adapter else {})}
        if not stream:
            r = await aclient.completions.create(model=model, prompt=prompt, **GREEDY, extra_body=extra)
            return r.choices[0].token_ids
        ids = []
        async for chunk in await aclient.completions.create(model=model, prompt=prompt, **GREEDY, stream=True,
                                                            extra_body=extra):
            ids += chunk.choices[0].token_ids or []
        return ids

    async def main():
        aclient = openai.AsyncOpenAI(base_url=fairsteer.url + "/v1", api_key="unused", max_retries=0)
        alone = [await run(aclient, p, a, s, False) for p, a, s, _ in cases]
        together = await asyncio.gather(*(run(aclient, *case) for case in cases))
        return alone, together

    alone, together = asyncio.run(main())
    mismatched = [case for case, x, y in zip(cases, alone, together) if x != y]
    assert not mismatched, f"batched output differs from solo for {mismatched}"
    assert len({tuple(ids) for ids in alone}) > len(PROMPTS), "settings must actually differ in output"


BAD_BODIES = [  # (raw JSON fields spliced into a valid request, param the 400 must name)
    ('"fairness_strength": "0.5"', "fairness_strength"),
    ('"fairness_strength": null', "fairness_strength"),
    ('"fairness_strength": NaN', "fairness_strength"),
    ('"fairness_strength": Infinity', "fairness_strength"),
    ('"fairness_strength": -Infinity', "fairness_strength"),
    ('"fairness_strength": 1e999', "fairness_strength"),
    ('"fairness_strength": -0.5', "fairness_strength"),
    ('"fairness_strength": 2.5', "fairness_strength"),
    ('"steering": "nope"', "steering"),
    ('"steering": null', "steering"),
    ('"fairness_strength": 0.5, "vllm_xargs": {"fairness_strength": 0.7}', "fairness_strength"),
    ('"steering": "mix", "vllm_xargs": {"steering": "boost"}', "steering"),
    ('"vllm_xargs": "fairness_strength=1"', "vllm_xargs"),
    ('"vllm_xargs": {"fairness_strength": NaN}', "fairness_strength"),
    ('"fairness_strenght": 0.5', "fairness_strenght"),
]


@pytest.mark.parametrize("endpoint", ["completions", "chat/completions"])
@pytest.mark.parametrize(("fields", "param"), BAD_BODIES, ids=[f for f, _ in BAD_BODIES])
def test_bad_steering_input_gets_400_naming_the_field(fairsteer, model, endpoint, fields, param):
    what = '"prompt": "Hi"' if endpoint == "completions" else '"messages": [{"role": "user", "content": "Hi"}]'
    body = f'{{"model": {json.dumps(model)}, {what}, "max_tokens": 2, {fields}}}'
    r = httpx.post(f"{fairsteer.url}/v1/{endpoint}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400 and error["param"] == param
    assert param.split(".")[-1] in error["message"] or "vllm_xargs" in error["message"], error["message"]


def test_server_keeps_serving_after_bad_input(client, model):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="Hi", max_tokens=2, extra_body={"fairness_strength": -1})
    assert token_ids(client, model, PROMPTS[0], fairness_strength=0.5, steering="mix")


def test_steering_fields_are_refused_where_they_cannot_apply(fairsteer, model):
    r = httpx.post(f"{fairsteer.url}/v1/responses", json={"model": model, "input": "Hi", "fairness_strength": 1.0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "fairness_strength", r.text


def _cache_counters(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values["vllm:prefix_cache_queries_total"], values["vllm:prefix_cache_hits_total"]


def test_prefix_cache_is_on_and_never_shared_across_steering_settings(fairsteer, client, model):
    """A 300-token prompt fills two 128-token KV blocks; hits count the tokens read from cache."""
    prompt = list(range(3, 303))

    async def settle(before):  # the engine's stats reach /metrics just after the response
        for _ in range(300):  # 30 s: a loaded machine can be slow to publish
            now = _cache_counters(fairsteer.url)
            if now[0] > before[0]:
                return now
            await asyncio.sleep(0.1)
        raise AssertionError("prefix cache queries did not increase")

    def hits(**extra):
        before = _cache_counters(fairsteer.url)
        client.completions.create(model=model, prompt=prompt, max_tokens=1, extra_body=extra)
        after = asyncio.run(settle(before))
        return after[1] - before[1]

    hits(fairness_strength=0)
    assert hits(fairness_strength=0) >= 256, "prefix caching must stay on for unsteered requests"
    assert hits(fairness_strength=1.0, steering="mix") == 0, "steered request reused unsteered KV"
    assert hits(fairness_strength=1.0, steering="mix") >= 256, "the same setting must reuse its own KV"
    assert hits(fairness_strength=0.5, steering="mix") == 0, "another strength reused KV"
    assert hits(fairness_strength=1.0, steering="boost") == 0, "another adapter reused KV"


def test_steerings_models_health_and_metrics_respond(fairsteer, model, adapter_table):
    listing = httpx.get(fairsteer.url + "/v1/steerings").json()
    assert [a["id"] for a in listing["data"]] == list(adapter_table)
    assert listing["default_adapter"] == next(iter(adapter_table)) and listing["default_strength"] == 0.0
    for entry in listing["data"]:
        spec = io.load(adapter_table[entry["id"]])
        assert entry["version"] == spec.version and entry["sites"] == list(spec.sites)
        assert entry["calibration"] == list(spec.meta.calibration) and entry["method"] == "constructed"
    assert [m["id"] for m in httpx.get(fairsteer.url + "/v1/models").json()["data"]] == [model]
    assert httpx.get(fairsteer.url + "/health").status_code == 200
    assert "vllm:prefix_cache_queries_total" in httpx.get(fairsteer.url + "/metrics").text


def test_n_greater_than_one_streams_every_choice_steered(client, model, boost_adapter):
    """n = 2 with the boost adapter, top_k = 1 (vLLM refuses n > 1 at temperature 0): at ω = 1 every token of
    both choices is its target token."""
    def choices(strength):
        stream = client.completions.create(
            model=model, prompt="Hi", max_tokens=4, n=2, temperature=1.0, stream=True,
            extra_body={"fairness_strength": strength, "steering": "boost", "return_token_ids": True, "top_k": 1})
        chunks, tokens = list(stream), {}
        for chunk in chunks:
            for c in chunk.choices:
                tokens.setdefault(c.index, []).extend(c.model_extra.get("token_ids") or [])
        return chunks[0].model_extra["fairsteer"]["strength"], tokens

    target = [boost_adapter.target_token] * 4
    strength, steered = choices(1.0)
    assert strength == 1.0 and steered == {0: target, 1: target}, steered
    assert all(tokens != target for tokens in choices(0.0)[1].values())

def test_audit_of_plain_vllm_at_strength_zero_matches_fairsteer(servers, model, tmp_path, capsys):
    """`fairsteer audit` audits any OpenAI-compatible server at strength 0, sending no fairsteer field; with
    the same seeds plain vLLM's sampled outputs equal fairsteer's at strength 0. A strength above 0 is
    refused for plain vLLM, which would silently ignore it."""
    from cli.main import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The doctor called the nurse because", "occupation": "nurse"}\n'
                       '{"messages": [{"role": "user", "content": "Hello world!"}], "occupation": "mechanic"}\n')
    texts = {}
    for name, server in (("fairsteer", servers[0]), ("plain", servers[1])):
        argv = ["audit", "--url", server.url, "--model", model, "--strengths", "0", "--prompts", str(prompts),
                "--samples", "2", "--max-tokens", "8", "--out", str(tmp_path / name)]
        assert main(argv) == 0
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["server"]["fairsteer"] == (name == "fairsteer")
        assert {c["endpoint"] for c in report["results"]} == {"completions", "chat"}
        texts[name] = [json.loads(line)["text"] for line in (tmp_path / name / "outputs.jsonl").open()]
    assert texts["plain"] == texts["fairsteer"], "strength 0 is the base model, sample for sample"
    capsys.readouterr()
    argv[argv.index("--strengths") + 1] = "0,1"
    assert main(argv) == 2
    assert "is not a fairsteer server" in capsys.readouterr().err
