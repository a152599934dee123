"""Authentication and request-size limits for `fairsteer serve`: one ASGI middleware.

    API key     (--api-key or FAIRSTEER_API_KEY)    required on every route except OPEN_PATHS
    admin key   (--admin-key or FAIRSTEER_ADMIN_KEY) required on ADMIN_PREFIX (adapter management);
                                                    also accepted wherever the API key is
    body limit  (--max-request-bytes)               larger bodies get 413 before anything parses them

Keys travel as `Authorization: Bearer KEY` (what the `openai` client sends). Keys are compared as SHA-256
digests with `hmac.compare_digest`, so neither a key's content nor its length leaks through timing.
Rejections use OpenAI's error shape: 401 for a missing or wrong key, 403 for the API key on an admin route
(valid, but not allowed there), 413 for an oversized body. Health, metrics and the API's documentation stay
open so probes and Prometheus need no secret; none of them shows a key or any request text.

The middleware sits outside vLLM's and the steering middleware (server/app.py declares the order), so
nothing reads a body before it is authenticated and bounded.
"""

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from server.asgi import Message, Receive, Scope, Send, openai_error, replay_body, route_path, send_error

ADMIN_PREFIX = "/v1/admin/"
OPEN_PATHS = frozenset({"/health", "/livez", "/ping", "/metrics", "/version", "/openapi.json", "/docs", "/redoc",
                        "/docs/oauth2-redirect"})
DEFAULT_MAX_REQUEST_BYTES = 1024**2  # 1 MiB: about 250k tokens of text, far above any context served here
API_KEY_ENV, ADMIN_KEY_ENV = "FAIRSTEER_API_KEY", "FAIRSTEER_ADMIN_KEY"


@dataclass(frozen=True)
class SecuritySettings:
    api_key: str | None = None          # None: the API is open (loopback development)
    admin_key: str | None = None        # None: adapter management is disabled
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    @classmethod
    def from_options(cls, api_key: str | None, admin_key: str | None,
                     max_request_bytes: int) -> "SecuritySettings":
        """Flags win over the environment; raises ValueError naming the problem and the fix."""
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        admin_key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV)
        for flag, key in (("--api-key", api_key), ("--admin-key", admin_key)):
            if key is not None and (len(key) < 8 or key != key.strip()):
                raise ValueError(f"{flag} must be at least 8 characters without surrounding spaces")
        if api_key is not None and api_key == admin_key:
            raise ValueError("--admin-key must differ from --api-key: every API client would be an admin")
        if max_request_bytes < 1024:
            raise ValueError(f"--max-request-bytes must be at least 1024; got {max_request_bytes}")
        return cls(api_key or None, admin_key or None, max_request_bytes)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class SecurityMiddleware:
    def __init__(self, app: Callable, settings: SecuritySettings):
        self.app, self.settings = app, settings
        self._api = _digest(settings.api_key) if settings.api_key else None
        self._admin = _digest(settings.admin_key) if settings.admin_key else None

    def _role(self, token: str | None) -> str | None:
        """'admin', 'api' or None; both digests are always compared (no early exit on a match)."""
        given = _digest(token or "")
        is_admin = self._admin is not None and hmac.compare_digest(given, self._admin)
        is_api = self._api is not None and hmac.compare_digest(given, self._api)
        return "admin" if is_admin else "api" if is_api else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and self._check_key(route_path(scope), _bearer(scope)):
            return await send({"type": "websocket.close", "code": 1008})  # policy violation
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        if path not in OPEN_PATHS:
            problem = self._check_key(path, _bearer(scope))
            if problem:
                status, message = problem
                extra = ((b"www-authenticate", b"Bearer"),) if status == 401 else ()
                return await send_error(send, status, message, headers=extra)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._bounded_body(scope, receive, send)
            if body is None:
                return
            receive = replay_body(body, receive)
        await self.app(scope, receive, _OpenAIErrors(send).send)

    def _check_key(self, path: str, token: str | None) -> tuple[int, str] | None:
        if path.startswith(ADMIN_PREFIX):
            if self._admin is None:
                return None  # admin routes are not installed; vLLM answers 404
            role = self._role(token)
            if role == "admin":
                return None
            if role == "api":
                return 403, "the API key may not manage adapters; use the admin key (--admin-key)"
            return 401, "missing or invalid admin key; send `Authorization: Bearer <admin key>`"
        if self._api is None or self._role(token) is not None:
            return None
        return 401, "missing or invalid API key; send `Authorization: Bearer <API key>` (openai: api_key=...)"

    async def _bounded_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 (declared or actual size over the limit)."""
        limit = self.settings.max_request_bytes
        message = (f"request body exceeds this server's limit of {limit} bytes (--max-request-bytes); "
                   "send a shorter prompt")
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_error(send, 413, message)
            return None
        chunks, size = [], 0
        while True:
            event = await receive()
            if event["type"] != "http.request":
                break  # the client went away; the app sees the disconnect on its next receive
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, message)
                return None
            chunks.append(chunk)
            if not event.get("more_body", False):
                break
        return b"".join(chunks)


class _OpenAIErrors:
    """Rewrites error responses not already in OpenAI's shape (e.g. FastAPI's `{"detail": ...}` for a body
    that is not JSON, Starlette's 404/405) into it, keeping the status; other responses pass untouched."""

    def __init__(self, send: Send):
        self._send = send
        self._start: Message | None = None
        self._body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self._start = message
            return
        if self._start is None or message["type"] != "http.response.body":
            return await self._send(message)
        self._body += message.get("body", b"")
        if message.get("more_body", False):
            return
        status, body = self._start["status"], self._body
        if not _is_openai_error(body):
            body = json.dumps(openai_error(status, _detail(body, status))).encode()
        headers = [(k, v) for k, v in self._start.get("headers", [])
                   if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self._send(dict(self._start, headers=headers))
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _is_openai_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), dict) and "message" in data["error"]


def _detail(body: bytes, status: int) -> str:
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        detail = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if status == 400 and detail == "There was an error parsing the body":
        detail = "the request body is not valid JSON; send a JSON object"
    return detail if isinstance(detail, str) else json.dumps(detail)
