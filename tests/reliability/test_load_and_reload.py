"""Load with isolation and adapters at run time, against one real `fairsteer serve` (tiny model).

The server starts with adapters A and B (two random adapters at every site) and `hot` (= A's file),
--adapter-dir holding A, B and bad files, --max-adapters 4. Greedy outputs are compared token for token
with the same request run alone (bench/load_test.py); reloads happen while requests are in flight; the
last test stops the server with SIGTERM as streams start and checks they all finish.
"""

import asyncio
import json
import shutil
import signal
import time

import httpx
import pytest
from reliability.helpers import ADMIN_KEY, API_KEY, api_headers, assert_openai_error

from adapters import io
from bench.load_test import Job, call, client_for, make_jobs, run_load, solo_runs

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def server(start_server, adapter_dir):
    a, b = str(adapter_dir / "A.safetensors"), str(adapter_dir / "B.safetensors")
    # Room for long answers, so the drain test's streams are still generating when the signal comes.
    return start_server({"A": a, "B": b, "hot": a}, "--adapter-dir", str(adapter_dir), "--max-adapters", "4",
                        engine=("--max-model-len", "1024"))


@pytest.fixture(scope="module")
def model(rel_model):
    return str(rel_model)


@pytest.fixture(scope="module")
def versions(adapter_dir):
    return {name: io.load(adapter_dir / f"{name}.safetensors").version for name in ("A", "B")}


def admin(server, method, name="", **json):
    return httpx.request(method, f"{server.url}/v1/admin/adapters{'/' + name if name else ''}",
                         headers=api_headers(ADMIN_KEY), json=json or None, timeout=60)


def test_bounded_load_keeps_every_greedy_request_equal_to_its_solo_run(server, model):
    jobs = make_jobs(120, ["A", "B"], seed=1)
    report = asyncio.run(run_load(server.url, model, jobs, concurrency=16, api_key=API_KEY))
    print(report.summary())
    assert not report.errors, [r.error for r in report.errors[:5]]
    assert not report.mismatches, report.mismatches[:3]
    assert sum(r.job.hang_up for r in report.results) > 0, "the mix must include clients hanging up"
    assert len({r.tokens for r in report.results if r.job.greedy and r.tokens}) > 10


def test_hung_up_steered_streams_leave_no_steering_behind(server, model):
    """Steered streams abandoned after their first chunk, then unsteered requests in the same rows."""
    # 8 x n=4 x 200 tokens keep the engine busy, so the hang-ups really abort rows mid-generation.
    steered = [Job("completions", "Hi", "A", 2.0, True, 4, False, True, max_tokens=200) for _ in range(8)]
    plain = [Job(ep, p, None, 0.0, False, 1, True, False) for ep in ("completions", "chat/completions")
             for p in ("The doctor said", "Paris is", "Hi", "Once upon a time")]

    async def main():
        async with client_for(server.url, API_KEY, 16) as client:
            reference = await solo_runs(client, model, plain)
            hung = await asyncio.gather(*(call(client, model, j) for j in steered))
            after = await asyncio.gather(*(call(client, model, j) for j in plain))
        return reference, hung, after

    reference, hung, after = asyncio.run(main())
    assert all(r.ok for r in hung), [r.error for r in hung]
    assert [r.tokens for r in after] == [reference[j.solo_key()] for j in plain], \
        "an unsteered request after abandoned steered ones must equal its solo run"
    slots = admin(server, "GET").json()["data"]
    assert all(s["in_flight"] == 0 for s in slots), f"hung-up requests still counted in flight: {slots}"


def test_replacing_an_adapter_under_load_serves_each_request_whole_with_one_version(server, model, versions):
    """`hot` flips between A's and B's file during the load while `extra` is loaded and unloaded: no
    request fails, and each greedy output equals the solo output of the version its response names (a
    request switched mid-way would match neither)."""
    jobs = [j for j in make_jobs(150, ["hot"], seed=2) if j.adapter == "hot" and not j.hang_up]

    async def references():
        async with client_for(server.url, API_KEY, 4) as client:
            table = {}
            for source in ("A", "B"):
                alike = [Job(j.endpoint, j.prompt, source, j.strength, False, 1, True, False) for j in jobs]
                solo = await solo_runs(client, model, alike)
                for j in jobs:
                    key = Job(j.endpoint, j.prompt, source, j.strength, False, 1, True, False).solo_key()
                    if key in solo:
                        table[(j.solo_key(), versions[source])] = solo[key]
            return table

    reloads = []

    async def flip():
        async with httpx.AsyncClient(base_url=server.url, headers=api_headers(ADMIN_KEY), timeout=60) as c:
            for i in range(6):
                await asyncio.sleep(0.3)
                r = await c.put("/v1/admin/adapters/hot", json={"file": "B.safetensors" if i % 2 == 0 else
                                                                 "A.safetensors"})
                reloads.append((r.status_code, r.text))

    async def churn():  # another adapter loaded and unloaded at the same time (admin calls overlap)
        async with httpx.AsyncClient(base_url=server.url, headers=api_headers(ADMIN_KEY), timeout=60) as c:
            for _ in range(3):
                loaded = await c.put("/v1/admin/adapters/extra", json={"file": "B.safetensors"})
                unloaded = await c.delete("/v1/admin/adapters/extra")
                reloads.append((loaded.status_code, loaded.text))
                reloads.append((unloaded.status_code, unloaded.text))

    async def admin_calls():
        await asyncio.gather(flip(), churn())

    reference = asyncio.run(references())
    report = asyncio.run(run_load(server.url, model, jobs, 12, API_KEY, reference=reference, during=admin_calls))
    print(report.summary())
    assert [s for s, _ in reloads] == [200] * 12, reloads
    assert not report.errors, [r.error for r in report.errors[:5]]
    assert not report.mismatches, report.mismatches[:3]
    served = {r.version for r in report.results}
    assert served == set(versions.values()), f"both versions should have served some requests: {served}"


def test_a_file_failing_validation_is_refused_and_the_old_version_keeps_serving(server, model, versions):
    current = admin(server, "PUT", "hot", file="A.safetensors").json()["version"]
    for file, status, words in [("corrupt.safetensors", 400, "not a readable safetensors"),
                                ("wrong.safetensors", 400, "hidden_size"),
                                ("../outside.safetensors", 400, ".."),
                                ("/etc/passwd", 400, "relative"),
                                ("escape.safetensors", 404, "no adapter file"),
                                ("missing.safetensors", 404, "no adapter file")]:
        error = assert_openai_error(admin(server, "PUT", "hot", file=file), status)
        assert words in error["message"], error
    r = httpx.post(server.url + "/v1/completions", headers=api_headers(), timeout=60,
                   json={"model": model, "prompt": "Hi", "max_tokens": 4, "fairness_strength": 1.0, "steering": "hot"})
    assert r.status_code == 200 and r.headers["x-fairsteer-version"] == current == versions["A"]


def test_load_unload_and_the_adapter_limit(server, model):
    assert admin(server, "PUT", "C", file="B.safetensors").status_code == 200  # 4 of 4
    assert_openai_error(admin(server, "PUT", "D", file="B.safetensors"), 409)
    assert admin(server, "DELETE", "C").json()["adapter"] == "C"
    steer_c = {"model": model, "prompt": "Hi", "max_tokens": 2, "fairness_strength": 1.0, "steering": "C"}
    error = assert_openai_error(httpx.post(server.url + "/v1/completions", json=steer_c, headers=api_headers()), 400)
    assert error["param"] == "steering"
    assert_openai_error(admin(server, "DELETE", "A"), 409)  # the default adapter
    assert_openai_error(admin(server, "DELETE", "nope"), 404)
    assert_openai_error(admin(server, "PUT", "bad name!", file="A.safetensors"), 400)
    listed = [a["id"] for a in httpx.get(server.url + "/v1/steerings", headers=api_headers()).json()["data"]]
    assert listed == ["A", "B", "hot"]


def test_a_vanished_adapter_file_turns_health_unhealthy(server, model, adapter_dir):
    shutil.copy(adapter_dir / "B.safetensors", adapter_dir / "temp.safetensors")
    assert admin(server, "PUT", "temp", file="temp.safetensors").status_code == 200
    (adapter_dir / "temp.safetensors").unlink()
    error = assert_openai_error(httpx.get(server.url + "/health"), 503)
    assert "temp.safetensors" in error["message"] and "vanished" in error["message"]
    body = {"model": model, "prompt": "Hi", "max_tokens": 2, "fairness_strength": 1.0, "steering": "temp"}
    assert httpx.post(server.url + "/v1/completions", json=body, headers=api_headers()).status_code == 200
    assert_openai_error(admin(server, "PUT", "temp", file="temp.safetensors"), 404)
    assert admin(server, "DELETE", "temp").status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200


def test_shutdown_drains_in_flight_requests(server, model):
    """Last in the module: SIGTERM as soon as the first stream has its response headers, when the other
    requests are arriving, being prepared or just reaching the engine. Each request the server accepted must
    finish whole, each it had not a clear 503; /health says 503 meanwhile; nothing ends cut or empty."""
    streams, choices, tokens = 12, 4, 480  # seconds of engine work: the drain really has work to finish
    body = {"model": model, "prompt": "Hi", "max_tokens": tokens, "min_tokens": tokens, "stream": True,
            "n": choices, "temperature": 1.0, "return_token_ids": True, "fairness_strength": 1.0, "steering": "B"}
    received = [0] * streams
    signalled = asyncio.Event()
    during_drain: list = []

    async def stream(client, i):
        done = False
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if not signalled.is_set():
                server.proc.send_signal(signal.SIGTERM)
                signalled.set()
            async for line in r.aiter_lines():
                done = done or line == "data: [DONE]"
                if line.startswith("data: {"):
                    received[i] += sum(len(c.get("token_ids") or ()) for c in json.loads(line[6:])["choices"])
        return r.status_code, received[i], done

    async def after_signal(client):
        """/health turns 503 once the server has begun draining; a new request then gets 503 too."""
        await signalled.wait()
        deadline = time.monotonic() + 20
        while (health := (await client.get("/health")).status_code) == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        late = await client.post("/v1/completions", json={"model": model, "prompt": "Hi"})
        during_drain.extend([health, late.status_code if late.status_code != 500 else late.text])

    async def main():
        async with client_for(server.url, API_KEY, streams + 2) as client:
            results, _ = await asyncio.gather(asyncio.gather(*(stream(client, i) for i in range(streams))),
                                              after_signal(client))
            return results

    results = asyncio.run(main())
    whole, refused = (200, choices * tokens, True), (503, 0, False)
    assert set(results) <= {whole, refused}, f"requests were cut or ended empty: {results}"
    assert results.count(whole) >= 2, f"the accepted requests must be served: {results}"
    assert during_drain == [503, 503], f"/health and a new request during the drain got {during_drain}"
    assert server.proc.wait(60) is not None
