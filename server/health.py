"""Health for orchestrators: readiness (`/health`) and liveness (`/livez`) are different questions.

    /health   vLLM's check of the engine, plus: every loaded adapter's file still exists (else 503 naming
              it), and 503 while draining (server/drain.py). A balancer or readiness probe stops sending
              traffic here; nothing needs restarting.
    /livez    the engine alone: 200 while it runs, 503 once it is dead. A liveness probe restarts the pod
              only then; a vanished adapter file or a drain must not restart a server that still serves.
"""

import os
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from server.asgi import Receive, Scope, Send, openai_error, route_path, send_error
from server.registry import SteeringRegistry

LIVENESS_PATH = "/livez"


class AdapterFileHealth:
    """GET /health also fails (503, naming the file) when a loaded adapter's file has vanished.

    The copy in memory keeps serving, but the server could not restart or reload it: an operator must know.
    """

    def __init__(self, app: Callable, get_registry: Callable[[], SteeringRegistry]):
        self.app, self.get_registry = app, get_registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) == "/health":
            for name, adapter in self.get_registry().adapters.items():
                if not os.path.isfile(adapter.path):
                    message = (f"adapter {name!r}: its file {adapter.path} has vanished; the loaded copy "
                               "keeps serving but a restart would fail. Restore the file or reload the adapter")
                    return await send_error(send, 503, message)
        await self.app(scope, receive, send)


def add_liveness_route(app: FastAPI, engine_client) -> None:
    async def livez() -> JSONResponse:
        try:
            await engine_client.check_health()
        except Exception as exc:  # noqa: BLE001 - any failure of the engine check means "not alive"
            return JSONResponse(openai_error(503, f"the engine is not running ({exc})"), status_code=503)
        return JSONResponse({"status": "alive"})

    app.add_api_route(LIVENESS_PATH, livez, methods=["GET"], tags=["fairsteer"],
                      summary="Liveness: the engine runs (readiness is /health)")
