"""`fairsteer serve -- --api-server-count 2`: two API processes over one engine, both fairsteer's app.

Before server/api_servers.py, fairsteer's start-up path (vLLM's `run_server` written out) ignored the
option: one API process served, silently. Now the parent starts the engine and two API processes that
share the port; each installs fairsteer's middleware and checks the engine's slot table before serving.

Evidence that both serve steering: each process announces its adapters at start-up; during a burst of
concurrent requests both processes hold client connections; every answer carries fairsteer's
annotation (a process without the middleware would answer unannotated and unsteered) and equals the
single-process answer token for token.

Run-time adapters (--adapter-dir) with two API processes: two keep-alive connections to each process (which
process holds a connection is read from the processes' sockets); a load, a replace and an unload made
through one process are seen by requests through the other at once (the engine's table is the one source
of truth, server/admin.py); a stream admitted through one process before a replace through the other is
served whole by its version, and counted in flight by both; both report the same slot table; the adapter
record names the final set.
"""

import asyncio
import http.client
import json
import threading
import time

import httpx
import psutil
import pytest
from distributed.helpers import ADMIN_KEY, REFERENCE, adapter_table, body

from adapters import io

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ANNOUNCEMENT = "fairsteer: serving"


@pytest.fixture(scope="module")
def server(start, dist_model, dist_adapters, tp1_reference):  # after the one-process reference
    # Keep-alive connections stay open for the whole module: each stays with the API process that took it.
    server = start("fairsteer", dist_model, engine=("--api-server-count", "2"), adapters=adapter_table(dist_adapters),
                   options=("--adapter-dir", str(dist_adapters), "--max-adapters", "4"),
                   env={"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "600"})
    yield server
    server.stop()  # idle engine workers still poll: free the cores for the next module


def api_processes(server) -> list[psutil.Process]:
    found = []
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "APIServer" in " ".join(p.cmdline()) or p.name().startswith("VLLM::APIServer"):
                found.append(p)
        except psutil.Error:  # a helper process that exited meanwhile
            pass
    return found


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


class Connection:
    """One keep-alive HTTP connection; the API process that accepted it serves every request on it."""

    def __init__(self, server):
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        self.conn.connect()
        self.sock, self.port = self.conn.sock, self.conn.sock.getsockname()[1]

    def send(self, method: str, path: str, payload=None, admin: bool = False) -> http.client.HTTPResponse:
        headers = {"Content-Type": "application/json"}
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        self.conn.request(method, path, body=None if payload is None else json.dumps(payload), headers=headers)
        assert self.conn.sock is self.sock, "the connection was reopened: it may have moved to another process"
        return self.conn.getresponse()

    def call(self, method: str, path: str, payload=None, admin: bool = False) -> tuple[int, dict, dict]:
        r = self.send(method, path, payload, admin)
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(r.read() or b"null")

    def complete(self, model: str, adapter: str, strength: float = 1.0) -> tuple[int, str | None, list]:
        status, headers, data = self.call("POST", "/v1/completions", body(model, "The doctor called the nurse because",
                                                                          adapter, strength))
        tokens = data["choices"][0]["token_ids"] if status == 200 else data
        return status, headers.get("x-fairsteer-version"), tokens


def process_holding(server, client_port: int) -> int | None:
    for proc in api_processes(server):
        for c in proc.net_connections("tcp"):
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port and c.raddr \
                    and c.raddr.port == client_port:
                return proc.pid
    return None


@pytest.fixture(scope="module")
def two_per_process(server) -> tuple[list[Connection], list[Connection]]:
    """Two keep-alive connections to each API process (one can stay busy with a stream)."""
    by_process: dict[int | None, list[Connection]] = {}
    for _ in range(64):
        connection = Connection(server)
        assert connection.call("GET", "/v1/steerings")[0] == 200
        by_process.setdefault(process_holding(server, connection.port), []).append(connection)
        if len(by_process) == 2 and None not in by_process and all(len(c) >= 2 for c in by_process.values()):
            break
    pids = {p.pid for p in api_processes(server)}
    assert set(by_process) == pids and all(len(c) >= 2 for c in by_process.values()), \
        f"could not open two connections to each API process {pids}: { {k: len(v) for k, v in by_process.items()} }"
    return tuple(connections[:2] for connections in by_process.values())


def test_an_admin_change_through_one_api_process_is_seen_through_the_other(server, dist_model, dist_adapters,
                                                                            two_per_process):
    (first, _), (second, second_streaming) = two_per_process
    version = {n: io.load(dist_adapters / f"{n}.safetensors").version for n in ("A", "B")}
    reference = {n: second.complete(dist_model, n)[2] for n in ("A", "B")}  # start-up adapters, same files
    assert second.complete(dist_model, "hot")[0] == 400, "`hot` is not loaded yet"

    assert first.call("PUT", "/v1/admin/adapters/hot", {"file": "A.safetensors"}, admin=True)[0] == 200
    assert second.complete(dist_model, "hot") == (200, version["A"], reference["A"]), \
        "a load through one API process must be served at once through the other, with the loaded rows"

    stream = second_streaming.send("POST", "/v1/completions", {**body(dist_model, "Hello world!", "hot", 1.0),
                                                     "max_tokens": 200, "stream": True})
    assert stream.status == 200 and stream.getheader("x-fairsteer-version") == version["A"]
    first_event = stream.readline()  # admitted and generating on the old version
    assert first_event.startswith(b"data: "), first_event
    status, _, replaced = first.call("PUT", "/v1/admin/adapters/hot", {"file": "B.safetensors"}, admin=True)
    assert (status, replaced["replaced"], replaced["version"]) == (200, version["A"], version["B"]), replaced
    slots = first.call("GET", "/v1/admin/adapters", admin=True)[2]["data"]
    old = [s for s in slots if s["name"] == "hot" and s["version"] == version["A"]]
    assert old and old[0]["state"] == "draining" and old[0]["in_flight"] == 1, \
        f"the stream admitted through the other process must keep the old version counted: {slots}"
    assert second.complete(dist_model, "hot") == (200, version["B"], reference["B"]), \
        "after a replace through one process, new requests through the other must get the new version"
    text = "".join(json.loads(line[6:])["choices"][0]["text"]
                   for line in stream.read().split(b"\n") if line.startswith(b"data: {"))
    first_text = json.loads(first_event[6:])["choices"][0]["text"]
    solo = first.call("POST", "/v1/completions", {**body(dist_model, "Hello world!", "A", 1.0), "max_tokens": 200})
    assert first_text + text == solo[2]["choices"][0]["text"], "the stream must be served whole by the old version"

    assert first.call("DELETE", "/v1/admin/adapters/hot", admin=True)[0] == 200
    status, _, error = second.complete(dist_model, "hot")
    assert status == 400 and "hot" in json.dumps(error), "an unload through one process must be seen by the other"
    tables = [c.call("GET", "/v1/admin/adapters", admin=True)[2] for c in (first, second)]
    assert tables[0] == tables[1], "both API processes must report the engine's one table"
    assert all(s["in_flight"] == 0 for s in tables[0]["data"]), tables[0]
    steerings = [c.call("GET", "/v1/steerings")[2] for c in (first, second)]
    assert steerings[0] == steerings[1] and {a["id"] for a in steerings[0]["data"]} == {"A", "B"}
    record = json.loads(server.log_path.with_suffix(".record.json").read_text())
    assert set(record["adapters"]) == {"A", "B"}, record
