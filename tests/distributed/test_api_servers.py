"""`fairsteer serve -- --api-server-count 2`: two API processes over one engine, both fairsteer's app.

Before server/api_servers.py, fairsteer's start-up path (vLLM's `run_server` written out) ignored the
option: one API process served, silently. Now the parent starts the engine and two API processes that
share the port; each installs fairsteer's middleware and checks the engine's slot table before serving.

Evidence that both serve steering: each process announces its adapters at start-up; during a burst of
concurrent requests both processes hold client connections; every answer carries fairsteer's
annotation (a process without the middleware would answer unannotated and unsteered) and equals the
single-process answer token for token. Run-time adapter loading is refused with more than one API
process (tests/reliability/test_security_unit.py; docs/distributed.md says why).
"""

import asyncio
import threading
import time

import httpx
import psutil
import pytest
from distributed.helpers import REFERENCE, adapter_table, body

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ANNOUNCEMENT = "fairsteer: serving"


@pytest.fixture(scope="module")
def server(start, dist_model, dist_adapters, tp1_reference):  # after the one-process reference
    server = start("fairsteer", dist_model, engine=("--api-server-count", "2"), adapters=adapter_table(dist_adapters))
    yield server
    server.stop()  # idle engine workers still poll: free the cores for the next module


def api_processes(server) -> list[psutil.Process]:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    return [p for p in children if "APIServer" in " ".join(p.cmdline()) or p.name().startswith("VLLM::APIServer")]


def test_each_api_process_runs_fairsteers_app(server):
    log = server.log_path.read_text(errors="replace")
    assert log.count(ANNOUNCEMENT) == 2, f"both API processes must announce their adapters:\n{server.log_tail()}"
    assert len(api_processes(server)) == 2, [p.cmdline() for p in psutil.Process(server.proc.pid).children(True)]


def test_both_api_processes_serve_steered_answers_equal_to_one_process(server, dist_model, tp1_reference):
    holders: set[int] = set()
    done = threading.Event()

    def watch():  # which API processes hold an established connection to the port meanwhile
        while not done.is_set():
            for proc in api_processes(server):
                try:
                    if any(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
                           for c in proc.net_connections("tcp")):
                        holders.add(proc.pid)
                except psutil.Error:
                    pass
            time.sleep(0.05)

    async def burst():
        async def one(request):  # a client of its own: a new connection per request
            async with httpx.AsyncClient(timeout=300) as client:
                r = await client.post(server.url + "/v1/completions", json=body(dist_model, *request))
            assert r.status_code == 200, r.text
            return tuple(r.json()["choices"][0]["token_ids"]), r.json()

        return await asyncio.gather(*(one(request) for request in REFERENCE * 2))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = asyncio.run(burst())
    finally:
        done.set()
        watcher.join()
    assert len(holders) == 2, f"only API processes {holders} accepted connections during the burst"
    for (request, reference), (tokens, answer) in zip(list(zip(REFERENCE, tp1_reference)) * 2, results):
        assert "fairsteer" in answer, f"{request}: answered without fairsteer's annotation: {answer}"
        assert tokens == reference.tokens, f"{request}: two API processes {tokens} != one process {reference.tokens}"


def test_a_bad_strength_is_refused_by_every_api_process(server, dist_model):
    async def burst():
        async def one():
            async with httpx.AsyncClient(timeout=60) as client:
                return await client.post(server.url + "/v1/completions",
                                         json={**body(dist_model, "Hi", "A", 1.0), "fairness_strength": -1})

        return await asyncio.gather(*(one() for _ in range(16)))

    assert {r.status_code for r in asyncio.run(burst())} == {400}
