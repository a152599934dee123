"""Security and bad input against a real `fairsteer serve` (tiny model), then the engine dying under it.

One server for the module: API key and admin key (from the environment), a 64 KiB body limit, adapters
A and B, run-time adapter management on. Every rejection must be a 4xx in OpenAI's error shape and leave
the server serving exactly as before; the last test kills the engine process and checks that requests
and health fail clearly instead of hanging.
"""

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from reliability.helpers import ADMIN_KEY, API_KEY, api_headers, assert_openai_error
from schemathesis import GenerationMode

pytestmark = pytest.mark.vllm

BODY_LIMIT = 64 * 1024
FUZZ_EXAMPLES = 25  # per operation and mode: bounded, about a minute in all on 2 cores


@pytest.fixture(scope="module")
def server(start_server, adapter_dir):
    # At most 4 sequences at once and room for long answers, so the engine-death test always kills the
    # tiny, fast engine mid-way.
    return start_server({"A": str(adapter_dir / "A.safetensors"), "B": str(adapter_dir / "B.safetensors")},
                        "--max-request-bytes", str(BODY_LIMIT), "--adapter-dir", str(adapter_dir),
                        engine=("--max-num-seqs", "4", "--max-model-len", "1024"))


@pytest.fixture(scope="module")
def model(rel_model):
    return str(rel_model)


def greedy(server, model, key=API_KEY, **extra):
    body = {"model": model, "prompt": "The doctor said", "max_tokens": 8, "temperature": 0.0,
            "return_token_ids": True, **extra}
    return httpx.post(server.url + "/v1/completions", json=body, headers=api_headers(key), timeout=60)


def token_ids(server, model, **extra):
    r = greedy(server, model, **extra)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def before(server, model):
    """Outputs before any bad input: the server must still produce exactly these afterwards."""
    return token_ids(server, model), token_ids(server, model, fairness_strength=1.0, steering="B")


def test_api_requires_the_api_key(server, model, before):
    for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": f"Basic {API_KEY}"},
                    {"Authorization": f"Bearer {API_KEY}x"}):
        r = httpx.post(server.url + "/v1/completions", json={"model": model, "prompt": "Hi"}, headers=headers)
        error = assert_openai_error(r, 401)
        assert "API key" in error["message"] and r.headers["www-authenticate"] == "Bearer"
    assert_openai_error(httpx.get(server.url + "/v1/models"), 401)
    assert_openai_error(httpx.get(server.url + "/v1/steerings"), 401)
    assert greedy(server, model).status_code == 200
    assert greedy(server, model, key=ADMIN_KEY).status_code == 200, "the admin key may use the API too"


def test_admin_routes_need_the_admin_key_not_the_api_key(server):
    url = server.url + "/v1/admin/adapters"
    assert_openai_error(httpx.get(url), 401)
    assert_openai_error(httpx.get(url, headers=api_headers("not-a-key-at-all")), 401)
    error = assert_openai_error(httpx.get(url, headers=api_headers(API_KEY)), 403)
    assert "admin key" in error["message"]
    assert_openai_error(httpx.put(url + "/A", json={"file": "B.safetensors"}, headers=api_headers(API_KEY)), 403)
    assert_openai_error(httpx.delete(url + "/B", headers=api_headers(API_KEY)), 403)
    assert httpx.get(url, headers=api_headers(ADMIN_KEY)).status_code == 200


def test_health_metrics_and_listings_reveal_no_secrets_or_texts(server, model):
    marker = "zebra quartz marker"
    assert greedy(server, model, prompt=marker).status_code == 200
    pages = [httpx.get(server.url + path).text for path in ("/health", "/metrics", "/version")]
    pages += [httpx.get(server.url + path, headers=api_headers(ADMIN_KEY)).text
              for path in ("/v1/steerings", "/v1/admin/adapters", "/v1/models")]
    for page in pages:
        for secret in (API_KEY, ADMIN_KEY, marker):
            assert secret not in page, f"{secret!r} leaked into a public page"


def test_oversized_bodies_get_413_and_the_server_still_serves(server, model, before):
    big = {"model": model, "prompt": "a " * BODY_LIMIT, "max_tokens": 1}
    assert_openai_error(httpx.post(server.url + "/v1/completions", json=big, headers=api_headers()), 413)

    def chunked():  # no Content-Length: the limit must hold on the bytes actually received
        yield b'{"model": "m", "prompt": "'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"a" * 1024
        yield b'"}'

    r = httpx.post(server.url + "/v1/completions", content=chunked(),
                   headers={**api_headers(), "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_openai_error(r, 413)
    assert token_ids(server, model) == before[0]


@pytest.mark.parametrize(("extra", "param"), [
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"prompt": "word " * 2000}, None),         # far past the 1024-token context, under the body limit
    ({"prompt": [5] * 1100}, None),              # token ids past the context
    ({"n": 10**9}, "n"),
    ({"fairness_strength": 1e308}, "fairness_strength"),
])
def test_absurd_values_get_a_clear_400_and_the_server_still_serves(server, model, before, extra, param):
    error = assert_openai_error(greedy(server, model, **extra), 400)
    if param:
        assert error["param"] == param or param in error["message"], error
    else:
        assert "context" in error["message"], error
    assert token_ids(server, model, fairness_strength=1.0, steering="B") == before[1]


def test_malformed_bodies_and_unknown_routes_get_openai_errors(server):
    headers = {**api_headers(), "content-type": "application/json"}
    for body in (b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'"a string"', b""):
        r = httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers)
        assert 400 <= r.status_code < 500, r.text
        assert_openai_error(r, r.status_code)
    assert_openai_error(httpx.get(server.url + "/v1/no-such-route", headers=api_headers()), 404)
    assert_openai_error(httpx.delete(server.url + "/v1/completions", headers=api_headers()), 405)


def _nested(depth: int, leaf: str = "[1]") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize", "/v1/admin/adapters/A"])
def test_deeply_nested_bodies_get_a_400_not_a_500(server, model, before, path):
    headers = {**api_headers(ADMIN_KEY if "admin" in path else API_KEY), "content-type": "application/json"}
    method = "PUT" if "admin" in path else "POST"
    for depth in (65, 1000, 5000, 20000):
        for body in (b'{"model": "%s", "prompt": ' % model.encode() + _nested(depth) + b"}", _nested(depth)):
            r = httpx.request(method, server.url + path, content=body, headers=headers, timeout=60)
            error = assert_openai_error(r, 400)
            assert "deeper" in error["message"], (path, depth, error)
    assert token_ids(server, model, fairness_strength=1.0, steering="B") == before[1]


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck), phases=[Phase.generate])
@given(depth=st.integers(1, 3000), width=st.integers(1, 400), wrap=st.sampled_from(["prompt", "messages", "top"]))
def test_fuzzed_nesting_depth_and_size_never_get_a_5xx(server, model, depth, width, wrap):
    inner = _nested(depth, ",".join(["1"] * width))
    body = {"prompt": b'{"model": "%s", "max_tokens": 1, "prompt": ' % model.encode() + inner + b"}",
            "messages": b'{"model": "%s", "max_tokens": 1, "messages": ' % model.encode() + inner + b"}",
            "top": inner}[wrap]
    path = "/v1/chat/completions" if wrap == "messages" else "/v1/completions"
    r = httpx.post(server.url + path, content=body, headers={**api_headers(), "content-type": "application/json"},
                   timeout=60)
    assert r.status_code < 500, (depth, width, wrap, r.text[:300])
    if r.status_code >= 400:
        assert_openai_error(r, r.status_code)


@pytest.mark.parametrize(("key", "public"), [("fairsteer_strength", "fairness_strength"),
                                             ("fairsteer_adapter", "steering")])
def test_internal_engine_keys_from_a_client_get_a_400_naming_the_public_field(server, model, key, public):
    error = assert_openai_error(greedy(server, model, vllm_xargs={key: 50}), 400)
    assert error["param"] == f"vllm_xargs.{key}" and repr(public) in error["message"], error


def _fuzz(schema, url, path, method, model, mode, failures) -> int:
    """Runs the cases; returns how many reached the server."""
    operation = schema[path][method]
    steering_fields = st.fixed_dictionaries({}, optional={"fairness_strength": st.sampled_from([0, 0.5, 2.0]),
                                                          "steering": st.sampled_from(["A", "B"])})

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode), valid_model=st.booleans(), steering=steering_fields)
    def run(case, valid_model, steering):
        calls.append(1)
        if isinstance(case.body, dict) and valid_model:  # reach past model validation half of the time
            case.body["model"] = model
            case.body.update(steering)
        key = ADMIN_KEY if path.startswith("/v1/admin") else API_KEY
        response = case.call(base_url=url, headers=api_headers(key), timeout=120)
        status = response.status_code
        if status >= 500:
            failures.append(f"{method} {path} -> {status} for {case.body!r:.300}: {response.text[:300]}")
        elif status >= 400:
            try:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and error["code"] == status
            except (ValueError, KeyError, TypeError, AssertionError):
                failures.append(f"{method} {path} -> {status} not in OpenAI's shape: {response.text[:300]}")

    calls: list[int] = []
    try:
        run()
    except Exception as exc:
        if type(exc).__name__ != "Unsatisfiable":  # no invalid variant of an operation: nothing to run
            raise
    return len(calls)


def test_fuzzing_from_the_openapi_schema_finds_no_5xx(server, model, before):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    body = schema.raw_schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"fairness_strength", "steering"} <= set(body), "the schema must document the steering fields"
    failures: list[str] = []
    targets = [("/v1/completions", "POST"), ("/v1/chat/completions", "POST"), ("/v1/steerings", "GET"),
               ("/v1/admin/adapters/{name}", "PUT"), ("/v1/admin/adapters/{name}", "DELETE")]
    for path, method in targets:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            ran = _fuzz(schema, server.url, path, method, model, mode, failures)
            assert ran > 0 or mode == GenerationMode.NEGATIVE, f"no valid {method} {path} case was generated"
    assert not failures, "\n".join(failures[:20])
    assert token_ids(server, model) == before[0], "fuzzing must leave the server unharmed"
    assert token_ids(server, model, fairness_strength=1.0, steering="B") == before[1]


def test_engine_death_gives_clear_errors_and_unhealthy_server_not_hangs(server, model):
    """Last in the module: kills the engine core (a child of the server this module started)."""
    engine_pid = _engine_core_pid(server.proc.pid)

    # 8 streams x 8 choices x 1000 tokens, 4 sequences at a time: 16000 engine steps, many seconds.
    streams, choices, tokens = 8, 8, 1000
    received = [0] * streams

    async def long_stream(client, i):
        body = {"model": model, "prompt": "Hi", "max_tokens": tokens, "min_tokens": tokens, "stream": True,
                "n": choices, "temperature": 1.0}
        try:
            async with client.stream("POST", server.url + "/v1/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith(('data: {"id"', 'data: {"fairsteer"')):
                        received[i] += 1
        except httpx.HTTPError:
            pass  # the connection may end abruptly: that is an error, not a hang

    async def kill_while_running():
        """Kill once the first chunks arrive, and at the latest 0.2 s after the streams were sent (the
        engine then has ~16000 steps to go). No network call here: a busy server answers late."""
        deadline = asyncio.get_running_loop().time() + 0.2
        while not (any(received) or asyncio.get_running_loop().time() > deadline):
            await asyncio.sleep(0.005)
        os.kill(engine_pid, signal.SIGKILL)

    async def main():
        async with httpx.AsyncClient(headers=api_headers(), timeout=60) as client:
            await asyncio.gather(kill_while_running(), *(long_stream(client, i) for i in range(streams)))

    started = time.monotonic()
    asyncio.run(main())
    timeline = {"streams ended": round(time.monotonic() - started, 1)}
    assert sum(received) < streams * choices * tokens, "the streams must end early once the engine is gone"
    statuses = []
    while time.monotonic() < started + 60:
        try:
            statuses.append(httpx.get(server.url + "/health", timeout=5).status_code)
        except httpx.HTTPError:
            statuses.append("down")
        if statuses[-1] in (503, "down"):
            break
        time.sleep(0.5)
    timeline["health " + str(statuses[-1])] = round(time.monotonic() - started, 1)
    assert statuses[-1] in (503, "down"), f"health stayed {statuses[-1]} after the engine died: {timeline}"
    try:
        outcome = greedy(server, model).status_code
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__  # the server shut itself down: also a clear failure
    timeline[f"request {outcome}"] = round(time.monotonic() - started, 1)
    assert outcome not in (200, "ReadTimeout"), f"a request after engine death must fail promptly: {timeline}"
    print("engine death timeline (s):", timeline, "chunks", sum(received))
    assert time.monotonic() - started < 90, f"errors must come promptly, not after a hang: {timeline}"


def _engine_core_pid(server_pid: int) -> int:
    """The PID of the server's engine-core child, found through /proc (no psutil needed)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            name = Path(f"/proc/{entry}/cmdline").read_bytes() + Path(f"/proc/{entry}/comm").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server_pid and b"EngineCore" in name:
            return int(entry)
    raise AssertionError(f"no engine-core child of server {server_pid}")
