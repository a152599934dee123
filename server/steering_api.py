"""Steering on top of vLLM's own OpenAI server: an ASGI middleware and `GET /v1/steerings`.

vLLM keeps the whole OpenAI protocol (streaming, n > 1, logprobs, tools, errors); this layer only

  1. reads the JSON body of POST /v1/completions and /v1/chat/completions, validates `fairness_strength`
     and `steering` (top level or in `vllm_xargs`) with `server.protocol.resolve`, and answers a bad
     value with HTTP 400 in OpenAI's error shape, naming the field;
  2. hands vLLM the rewritten body (internal `vllm_xargs` keys for the engine plugin, a `cache_salt`
     per steering setting so prefix caching stays on and correct);
  3. annotates the answer with what was applied: `x-fairsteer-*` headers, a top-level `"fairsteer"`
     object in the JSON body and in the first stream chunk;
  4. refuses steering fields on every other POST endpoint (vLLM would silently ignore them there).

It sits innermost in the middleware stack, so vLLM's authentication and CORS run before it.
"""

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from server import group_metrics
from server.protocol import (
    STRENGTH_FIELD,
    Applied,
    SteeringError,
    error_body,
    mentions_steering,
    resolve,
    rewrite,
)
from server.registry import SteeringRegistry
from server.security import replay_body, route_path

logger = logging.getLogger("fairsteer.serve")

STEERED_PATHS = ("/v1/completions", "/v1/chat/completions")
# Other endpoints that generate text; they cannot carry steering, so a non-zero default is refused there.
UNSTEERED_GENERATE_PATHS = ("/v1/responses", "/v1/messages", "/invocations", "/inference/v1/generate",
                            "/generative_scoring", "/v1/chat/completions/batch", "/v1/systemone")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def add_steering(app: FastAPI, get_registry: Callable[[], SteeringRegistry]) -> None:
    """Install the middleware (innermost) and the `/v1/steerings` route on vLLM's app."""
    from starlette.middleware import Middleware

    app.user_middleware.append(Middleware(SteeringMiddleware, get_registry=get_registry))
    if app.middleware_stack is not None:  # vLLM's SageMaker bootstrap builds the stack early; rebuild it
        app.middleware_stack = app.build_middleware_stack()

    async def list_steerings() -> JSONResponse:
        return JSONResponse(get_registry().describe())

    app.add_api_route("/v1/steerings", list_steerings, methods=["GET"], tags=["fairsteer"],
                      summary="Loaded steering adapters with their metadata and calibration tables")


class SteeringMiddleware:
    def __init__(self, app: Callable, get_registry: Callable[[], SteeringRegistry]):
        self.app = app
        self.get_registry = get_registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        body = await _read_body(receive)
        data = _parse_object(body)
        if data is None:  # not a JSON object: vLLM answers it with its own error
            return await self.app(scope, replay_body(body, receive), send)
        registry = self.get_registry()
        if path not in STEERED_PATHS:
            problem = _unsteerable(path, data, registry)
            if problem:
                return await _send_json(send, 400, error_body(*problem))
            return await self.app(scope, replay_body(body, receive), send)
        try:
            applied = resolve(data, registry.policy)
        except SteeringError as exc:
            return await _send_json(send, 400, error_body(exc.message, exc.param))
        new_body = json.dumps(rewrite(data, applied)).encode()
        _safely(group_metrics.observe_request, registry.model, applied.adapter, applied.strength)
        annotator = _Annotator(send, applied, registry.model)
        await self.app(_with_length(scope, len(new_body)), replay_body(new_body, receive), annotator.send)


def _unsteerable(path: str, data: dict[str, Any], registry: SteeringRegistry) -> tuple[str, str] | None:
    field = mentions_steering(data)
    if field:
        message = (f"{field} is not supported on {path}; steering applies to /v1/completions and "
                   "/v1/chat/completions")
        return message, field
    if path in UNSTEERED_GENERATE_PATHS and registry.default_strength > 0:
        message = (f"this server steers every request by default (fairness_strength "
                   f"{registry.default_strength}), which {path} cannot apply; use /v1/completions or "
                   "/v1/chat/completions")
        return message, STRENGTH_FIELD
    return None


class _Annotator:
    """Wraps `send`: adds the applied steering to headers and body, collects texts for group metrics."""

    def __init__(self, send: Send, applied: Applied, model: str):
        self._send, self.applied, self.model = send, applied, model
        self.mode = "pass"          # "json": buffer and annotate; "sse": annotate the first event
        self._start: Message | None = None
        self._buffer = b""
        self._annotated = False
        self.texts: dict[int, list[str]] = {}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            return await self._on_start(message)
        if message["type"] != "http.response.body" or self.mode == "pass":
            return await self._send(message)
        more = message.get("more_body", False)
        self._buffer += message.get("body", b"")
        if self.mode == "json":
            if not more:
                await self._send_json_body()
            return
        out, self._buffer = self._sse_events(self._buffer, final=not more)
        await self._send({"type": "http.response.body", "body": out, "more_body": more})
        if not more:
            self._observe()

    async def _on_start(self, message: Message) -> None:
        headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
        ctype = dict(message.get("headers", [])).get(b"content-type", b"")
        if message["status"] != 200:
            return await self._send(message)
        headers += self.applied.headers()
        if ctype.startswith(b"application/json"):
            self.mode, self._start = "json", dict(message, headers=headers)
            return
        if ctype.startswith(b"text/event-stream"):
            self.mode = "sse"
        else:
            headers = message.get("headers", []) + self.applied.headers()
        await self._send(dict(message, headers=headers))

    async def _send_json_body(self) -> None:
        body = self._buffer
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            data["fairsteer"] = self.applied.as_json()
            for choice in data.get("choices") or ():
                self._collect(choice, choice.get("message") or {})
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
            self._observe()
        assert self._start is not None
        headers = self._start["headers"] + [(b"content-length", str(len(body)).encode())]
        await self._send(dict(self._start, headers=headers))
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _sse_events(self, buffer: bytes, final: bool) -> tuple[bytes, bytes]:
        """(bytes to send now, incomplete remainder); annotates the first data event."""
        *events, rest = buffer.split(b"\n\n")
        if final and rest:
            events, rest = events + [rest], b""
        out = []
        for event in events:
            if event.startswith(b"data: {"):
                self._collect_event(event[6:])
                if not self._annotated:
                    self._annotated = True
                    tag = b'data: {"fairsteer": ' + json.dumps(self.applied.as_json()).encode()
                    event = tag + (b"" if event[7:8] == b"}" else b", ") + event[7:]
            out.append(event + b"\n\n")
        return b"".join(out), rest

    def _collect_event(self, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        for choice in data.get("choices") or ():
            self._collect(choice, choice.get("delta") or {})

    def _collect(self, choice: dict[str, Any], message: dict[str, Any]) -> None:
        text = choice.get("text")
        if not isinstance(text, str):
            text = message.get("content") if isinstance(message, dict) else None
        if isinstance(text, str):
            self.texts.setdefault(int(choice.get("index") or 0), []).append(text)

    def _observe(self) -> None:
        for parts in self.texts.values():
            _safely(group_metrics.observe_completion, self.model, self.applied.adapter,
                    self.applied.strength, "".join(parts))
        self.texts = {}


def _safely(fn: Callable[..., None], *args: Any) -> None:
    """Group metrics must never break serving: log their failures and carry on."""
    try:
        fn(*args)
    except Exception:  # any failure in observability is logged, never raised
        logger.exception("group metrics failed in %s; the request is served regardless", fn.__name__)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # client went away before sending the body
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _parse_object(body: bytes) -> dict[str, Any] | None:
    """The body as a dict; NaN/Infinity tokens parse to floats, which `resolve` then refuses."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return dict(scope, headers=headers + [(b"content-length", str(length).encode())])


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
