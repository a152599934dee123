"""Steering on top of vLLM's own OpenAI server: the request path of `fairness_strength` and `steering`.

vLLM keeps the whole OpenAI protocol (streaming, n > 1, logprobs, tools, errors); this middleware only

  1. parses the JSON body of a POST once (too deep a body gets HTTP 400), and on /v1/completions and
     /v1/chat/completions validates the steering fields (top level or in `vllm_xargs`) with
     `server.protocol.resolve`, answering a bad value with HTTP 400 in OpenAI's error shape;
  2. pins the request to the adapter version it was validated against: the rewritten body names that
     version's engine slot, counted in flight until the response ends (`AdapterSlots.admit`);
  3. hands vLLM the rewritten body (internal `vllm_xargs` keys for the engine plugin, a `cache_salt`
     per steering setting so prefix caching stays on and correct);
  4. annotates the answer with what was applied: `x-fairsteer-*` headers, a top-level `"fairsteer"`
     object in the JSON body and in the first stream chunk, and counts its groups (`group_metrics`);
  5. refuses steering fields on every other POST endpoint (vLLM would silently ignore them there).
"""

import json
import logging
from collections.abc import Callable
from typing import Any

from server import group_metrics
from server.admin import AdapterSlots, AdminError
from server.asgi import (
    BodyError,
    Message,
    Receive,
    Scope,
    Send,
    parse_json,
    read_body,
    replay_body,
    route_path,
    send_error,
    with_content_length,
)
from server.engine_boundary import STRENGTH_FIELD
from server.protocol import Applied, SteeringError, mentions_steering, resolve, rewrite
from server.registry import SteeringRegistry

logger = logging.getLogger("fairsteer.serve")

STEERED_PATHS = ("/v1/completions", "/v1/chat/completions")
# Other endpoints that generate text; they cannot carry steering, so a non-zero default is refused there.
UNSTEERED_GENERATE_PATHS = ("/v1/responses", "/v1/messages", "/invocations", "/inference/v1/generate",
                            "/generative_scoring", "/v1/chat/completions/batch", "/v1/systemone")


class SteeringMiddleware:
    def __init__(self, app: Callable, get_registry: Callable[[], SteeringRegistry], slots: AdapterSlots):
        self.app, self.get_registry, self.slots = app, get_registry, slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        body = await read_body(receive)
        try:
            data = parse_json(body)
        except BodyError as exc:
            return await send_error(send, 400, str(exc))
        if not isinstance(data, dict):  # not a JSON object: vLLM answers it with its own error
            return await self.app(scope, replay_body(body, receive), send)
        try:
            await self.slots.sync()  # another API process may have changed the adapters
        except AdminError as exc:
            return await send_error(send, exc.status, exc.message)
        registry = self.get_registry()
        if path not in STEERED_PATHS:
            problem = _unsteerable(path, data, registry)
            if problem:
                return await send_error(send, 400, *problem)
            return await self.app(scope, replay_body(body, receive), send)
        while True:
            try:
                applied = resolve(data, registry.policy)
            except SteeringError as exc:
                return await send_error(send, 400, exc.message, exc.param)
            if self.slots.admit(applied.slot):  # no await since `resolve`: the slot is still live here
                break
            try:  # another API process changed the table in between: resolve against the new one
                await self.slots.sync()
            except AdminError as exc:
                return await send_error(send, exc.status, exc.message)
            registry = self.get_registry()
        try:
            new_body = json.dumps(rewrite(data, applied)).encode()
            _safely(group_metrics.observe_request, registry.model, applied.adapter, applied.strength)
            annotator = _Annotator(send, applied, registry.model)
            await self.app(with_content_length(scope, len(new_body)), replay_body(new_body, receive),
                           annotator.send)
        finally:
            self.slots.release(applied.slot)


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
