"""The HTTP-level drain without an engine (fast): a Starlette app stands in for vLLM's routes and a recorder
for vLLM's engine shutdown, which is called from a thread as vLLM's launcher does."""

import asyncio
import time

import httpx
import pytest
from reliability.helpers import assert_openai_error
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from server.drain import Drain, DrainMiddleware


class Recorder:
    def __init__(self):
        self.calls: list[tuple[float, float | None]] = []

    def __call__(self, timeout=None):
        self.calls.append((time.monotonic(), timeout))


def make_app(drain: Drain, release: asyncio.Event):
    async def generate(request):
        await release.wait()
        return JSONResponse({"text": "whole"})

    async def pool_closed(request):
        raise RuntimeError("cannot schedule new futures after shutdown")

    async def broken(request):
        raise RuntimeError("something else")

    routes = [Route("/v1/completions", generate, methods=["POST"]), Route("/v1/closed", pool_closed, methods=["POST"]),
              Route("/v1/broken", broken, methods=["POST"]), Route("/health", lambda r: PlainTextResponse("")),
              Route("/metrics", lambda r: PlainTextResponse("metrics"))]
    # Installed as vLLM's app has it: inside Starlette's error middleware, outside the routes.
    return Starlette(routes=routes, middleware=[Middleware(DrainMiddleware, drain=drain)])


def client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t")


def test_engine_shutdown_waits_for_accepted_requests_and_new_ones_get_503():
    drain, stop = Drain(), Recorder()

    async def main():
        release = asyncio.Event()
        async with client(make_app(drain, release)) as c:
            accepted = asyncio.create_task(c.post("/v1/completions", json={}))
            while drain.in_flight == 0:
                await asyncio.sleep(0.01)
            shutdown = asyncio.get_running_loop().run_in_executor(None, drain.wrap_shutdown(stop), 10.0)
            while not drain.draining:
                await asyncio.sleep(0.01)
            refused = await c.post("/v1/completions", json={})
            health, metrics = await c.get("/health"), await c.get("/metrics")
            await asyncio.sleep(0.2)
            assert not stop.calls, "the engine was shut down while a request it had accepted was still running"
            released_at = time.monotonic()
            release.set()
            await shutdown
            return await accepted, refused, health, metrics, released_at

    accepted, refused, health, metrics, released_at = asyncio.run(main())
    assert accepted.status_code == 200 and accepted.json() == {"text": "whole"}
    assert "shutting down" in assert_openai_error(refused, 503)["message"]
    assert refused.headers["connection"] == "close"
    assert_openai_error(health, 503)
    assert metrics.status_code == 200 and metrics.text == "metrics"
    [(called_at, timeout)] = stop.calls
    assert called_at >= released_at and 1.0 <= timeout < 10.0, "vLLM gets what is left of the drain timeout"
    assert drain.in_flight == 0


def test_the_drain_gives_up_after_its_timeout():
    drain, stop = Drain(), Recorder()
    assert drain.enter()  # a request that never finishes
    started = time.monotonic()
    drain.wrap_shutdown(stop)(0.3)
    [(called_at, timeout)] = stop.calls
    assert 0.3 <= called_at - started < 15.0 and timeout == 1.0  # (the defect it guards against: forever)
    assert not drain.enter(), "no request is accepted once draining"


def test_a_shutdown_without_timeout_does_not_wait():
    drain, stop = Drain(), Recorder()
    assert drain.enter()
    drain.wrap_shutdown(stop)()
    assert stop.calls[0][1] is None and drain.draining


def test_the_second_shutdown_call_on_the_event_loop_does_not_block_it():
    """vLLM calls shutdown again on the event loop as its engine context closes."""
    drain, stop = Drain(), Recorder()
    assert drain.enter()  # a request still running past the first call's timeout

    async def on_the_loop():
        started = time.monotonic()
        drain.wrap_shutdown(stop)(30.0)
        return time.monotonic() - started

    assert asyncio.run(on_the_loop()) < 15.0  # blocking would take the full 30 s
    assert stop.calls[0][1] == pytest.approx(30.0, abs=1.0), "vLLM's own timeout is passed on unchanged"


@pytest.mark.parametrize("path,status", [("/v1/closed", 503), ("/v1/broken", 500)])
def test_only_the_closed_pool_error_of_a_stopping_engine_becomes_503(path, status):
    async def main():
        async with client(make_app(Drain(), asyncio.Event())) as c:
            return await c.post(path, json={})

    response = asyncio.run(main())
    assert response.status_code == status
    if status == 503:
        assert "shutting down" in assert_openai_error(response, 503)["message"]
