"""The few ASGI helpers every fairsteer middleware needs: paths, bodies, and OpenAI-shaped errors."""

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# JSON nested deeper than this is refused: json and pydantic recurse, and a 5,000-level body used to reach
# vLLM's parser and come back as HTTP 500. No OpenAI request nests more than a handful of levels.
MAX_JSON_DEPTH = 64

_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                404: "NotFoundError", 409: "ConflictError", 413: "RequestTooLargeError",
                503: "ServiceUnavailableError"}


class BodyError(ValueError):
    """A request body that parses as JSON but cannot be served (too deeply nested)."""


def route_path(scope: Scope) -> str:
    """The path routes match on: without the --root-path prefix when the request carries it (as Starlette
    routes), so no check can be dodged by prefixing a path."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


def openai_error(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, as vLLM's own errors use it."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "BadRequestError"), "param": param,
                      "code": status}}


async def send_json(send: Send, status: int, payload: dict[str, Any],
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, status: int, message: str, param: str | None = None,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send_json(send, status, openai_error(status, message, param), headers)


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away; the app sees it on its next receive
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields `body` once, then the real channel (so disconnects still reach the app)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def with_content_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return dict(scope, headers=headers + [(b"content-length", str(length).encode())])


def parse_json(body: bytes) -> Any:
    """The parsed body; None when it is not JSON (vLLM answers that with its own 400).

    NaN/Infinity tokens parse to floats, which the steering checks then refuse. Raises BodyError when the
    nesting is deeper than MAX_JSON_DEPTH.
    """
    try:
        data = json.loads(body)
    except RecursionError:
        raise BodyError(f"the request body nests JSON deeper than this server accepts ({MAX_JSON_DEPTH} "
                        "levels)") from None
    except ValueError:  # not JSON, or not UTF-8
        return None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise BodyError(f"the request body nests JSON deeper than this server accepts ({MAX_JSON_DEPTH} levels)")
    return data


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Iterative, so a deep body cannot exhaust the stack here."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
