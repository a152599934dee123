"""Graceful shutdown at the HTTP level: every request the server has accepted is served whole.

vLLM drains inside its engine on SIGTERM (--shutdown-timeout): sequences already scheduled finish. A request
still in the API process at that moment (its response headers possibly sent; being rendered, on its way to
the engine) is refused by the stopping engine, and its stream ends empty. So the engine's shutdown waits
here first:

    SIGTERM -> vLLM runs engine_client.shutdown(timeout) in a thread, which now first
               1. marks the server draining: new requests get 503 (OpenAI's error shape, `connection:
                  close`), /health 503, so load balancers move on;
               2. waits until every request already accepted has finished, or `timeout` has passed;
               3. calls vLLM's shutdown with what is left of the timeout.

Health probes and /metrics are not requests to wait for and keep answering while draining.
"""

import asyncio
import threading
import time
from collections.abc import Callable

from server.asgi import Receive, Scope, Send, route_path, send_error
from server.security import OPEN_PATHS

DRAINING_MESSAGE = "the server is shutting down (draining in-flight requests); retry on another instance"


class Drain:
    """The count of accepted requests and the draining flag, shared by the middleware (event loop) and the
    engine shutdown (a thread)."""

    def __init__(self):
        self.in_flight = 0
        self.draining = False
        self._idle = threading.Condition()

    def enter(self) -> bool:
        """Count a request in; False (and not counted) once draining."""
        with self._idle:
            if self.draining:
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._idle:
            self.in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Start draining; True once no request is in flight, False if `timeout` seconds pass first."""
        with self._idle:
            self.draining = True
            return self._idle.wait_for(lambda: self.in_flight == 0, timeout)

    def wrap_shutdown(self, shutdown: Callable[..., None]) -> Callable[..., None]:
        """vLLM's `engine_client.shutdown`, run after the accepted requests have finished."""

        def drained_shutdown(timeout: float | None = None) -> None:
            started = time.monotonic()
            # vLLM calls this again on the event loop as its engine context closes; waiting there would
            # block the very requests waited for.
            self.wait_idle(0 if _on_event_loop() else timeout or 0)
            if timeout:
                timeout = max(1.0, timeout - (time.monotonic() - started))  # a second to stop cleanly
            shutdown(timeout=timeout)

        return drained_shutdown


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


class DrainMiddleware:
    """Outermost (so it counts every request the server accepts): refuses new ones once draining."""

    def __init__(self, app: Callable, drain: Drain):
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        if path in OPEN_PATHS:
            if path == "/health" and self.drain.draining:
                return await send_error(send, 503, DRAINING_MESSAGE)
            return await self.app(scope, receive, send)
        if not self.drain.enter():
            return await send_error(send, 503, DRAINING_MESSAGE, headers=((b"connection", b"close"),))
        started = False

        async def tracked_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except RuntimeError as exc:
            # Past the drain timeout vLLM has closed its request pre-processing pool; a request reaching it
            # now raises "cannot schedule new futures after shutdown" (a bare 500). Say what it is.
            if "after shutdown" not in str(exc) or started:
                raise
            await send_error(send, 503, DRAINING_MESSAGE)
        finally:
            self.drain.leave()
