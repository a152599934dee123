"""The steering fields of an OpenAI request: validation and translation for the engine.

A client sends, at the top level of a `/v1/completions` or `/v1/chat/completions` body, or inside its
`vllm_xargs`:

    fairness_strength   number ω, 0 <= ω <= the server's maximum; omitted -> the operator's default
    steering            an adapter name; omitted -> the server's default adapter

`resolve` turns a parsed body into the `Applied` setting (or a `SteeringError` naming the field, which
becomes HTTP 400 in OpenAI's error shape); `rewrite` writes that setting into the body for vLLM:

    vllm_xargs.fairsteer_adapter / fairsteer_strength   read by the engine plugin (server.vllm_plugin)
    cache_salt                                           so prefix caching never shares KV across settings

vLLM itself silently ignores unknown top-level fields; this module is why a request is never served
with its steering dropped. No vLLM import here: it is plain data, tested without an engine.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# Public request fields and the internal `SamplingParams.extra_args` keys the plugin reads.
STRENGTH_FIELD = "fairness_strength"
ADAPTER_FIELD = "steering"
INTERNAL_ADAPTER_KEY = "fairsteer_adapter"
INTERNAL_STRENGTH_KEY = "fairsteer_strength"
INTERNAL_KEYS = (INTERNAL_ADAPTER_KEY, INTERNAL_STRENGTH_KEY)
_LOOKALIKE = re.compile(r"fairness|fairsteer|steer", re.IGNORECASE)


class SteeringError(ValueError):
    """A request whose steering fields cannot be served; `param` names the offending field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Policy:
    """What the operator configured: loaded adapters (name -> version), defaults and the maximum."""

    adapters: dict[str, str]          # serving name -> content hash (SteeringSpec.version)
    default_adapter: str | None
    default_strength: float = 0.0
    max_strength: float = 2.0


@dataclass(frozen=True)
class Applied:
    """The steering a request is served with; echoed in the response body, headers and first chunk."""

    adapter: str | None
    version: str | None
    strength: float

    @property
    def steered(self) -> bool:
        return self.adapter is not None and self.strength > 0

    def as_json(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "version": self.version, "strength": self.strength}

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-fairsteer-adapter", (self.adapter or "none").encode()),
                (b"x-fairsteer-version", (self.version or "none").encode()),
                (b"x-fairsteer-strength", repr(self.strength).encode())]


def error_body(message: str, param: str | None, status: int = 400) -> dict[str, Any]:
    """OpenAI's error shape, as vLLM's own 400s use it."""
    return {"error": {"message": message, "type": "BadRequestError", "param": param, "code": status}}


def _get_xargs(body: dict[str, Any]) -> dict[str, Any]:
    xargs = body.get("vllm_xargs")
    if xargs is None:
        return {}
    if not isinstance(xargs, dict):
        raise SteeringError(f"vllm_xargs must be a JSON object (a flat dict), not {_json_type(xargs)}",
                            "vllm_xargs")
    return xargs


def _json_type(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), "a number")


def _pick(body: dict[str, Any], xargs: dict[str, Any], name: str) -> tuple[bool, Any]:
    """(given, value) of a field that may sit at the top level or in vllm_xargs; they must agree."""
    top, inner = name in body, name in xargs
    if top and inner and not _same(body[name], xargs[name]):
        raise SteeringError(
            f"{name} is given twice with different values ({body[name]!r} at the top level, "
            f"{xargs[name]!r} in vllm_xargs); send it in one place", name)
    if top:
        return True, body[name]
    return inner, xargs.get(name)


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) \
            and not isinstance(y, bool):
        return float(x) == float(y)
    return type(x) is type(y) and x == y


def _check_strength(value: Any, policy: Policy) -> float:
    name = STRENGTH_FIELD
    if value is None:
        raise SteeringError(f"{name} must be a number, not null; omit it to use the server default "
                            f"({policy.default_strength})", name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SteeringError(f"{name} must be a number between 0 and {policy.max_strength}, "
                            f"not {_json_type(value)} ({value!r})", name)
    strength = float(value)
    if not math.isfinite(strength):
        raise SteeringError(f"{name} must be a finite number; got {value!r}", name)
    if strength < 0:
        raise SteeringError(f"{name} must be >= 0 (0 serves the base model); got {strength}", name)
    if strength > policy.max_strength:
        raise SteeringError(f"{name} {strength} is above this server's maximum {policy.max_strength} "
                            "(set by --max-fairness-strength)", name)
    return strength


def _check_adapter(value: Any, policy: Policy) -> str:
    name = ADAPTER_FIELD
    if not isinstance(value, str):
        raise SteeringError(f"{name} must be an adapter name (a string), not {_json_type(value)}; "
                            "omit it to use the server's default adapter", name)
    if value not in policy.adapters:
        loaded = ", ".join(sorted(policy.adapters)) or "none (this server runs unsteered)"
        raise SteeringError(f"unknown steering adapter {value!r}; loaded adapters: {loaded}. "
                            "GET /v1/steerings lists them", name)
    return value


def _refuse_lookalikes(body: dict[str, Any], xargs: dict[str, Any]) -> None:
    """A misspelt steering field would be silently ignored by vLLM: refuse it, naming the right one."""
    for where, keys, known in (("", body, (STRENGTH_FIELD, ADAPTER_FIELD)),
                               ("vllm_xargs.", xargs, (STRENGTH_FIELD, ADAPTER_FIELD, *INTERNAL_KEYS))):
        for key in keys:
            if isinstance(key, str) and _LOOKALIKE.search(key) and key not in known:
                raise SteeringError(f"unknown field {where}{key!r}; the steering fields are "
                                    f"{STRENGTH_FIELD!r} and {ADAPTER_FIELD!r}", f"{where}{key}")


def resolve(body: dict[str, Any], policy: Policy) -> Applied:
    """The steering setting a request asks for, validated against the server's policy."""
    xargs = _get_xargs(body)
    _refuse_lookalikes(body, xargs)
    strength_given, raw_strength = _pick(body, xargs, STRENGTH_FIELD)
    adapter_given, raw_adapter = _pick(body, xargs, ADAPTER_FIELD)
    strength = _check_strength(raw_strength, policy) if strength_given else policy.default_strength
    adapter = _check_adapter(raw_adapter, policy) if adapter_given else policy.default_adapter
    if adapter is None:
        if strength > 0:
            raise SteeringError(f"{STRENGTH_FIELD} {strength} was requested but this server has no steering "
                                "adapter loaded; start it with `fairsteer serve --adapter NAME=FILE`",
                                STRENGTH_FIELD)
        return Applied(None, None, 0.0)
    return Applied(adapter, policy.adapters[adapter], strength)


def mentions_steering(body: dict[str, Any]) -> str | None:
    """The first steering-related field a body carries (public or internal), or None."""
    for name in (STRENGTH_FIELD, ADAPTER_FIELD):
        if name in body:
            return name
    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict):
        for name in (STRENGTH_FIELD, ADAPTER_FIELD, *INTERNAL_KEYS):
            if name in xargs:
                return f"vllm_xargs.{name}"
    return None


def cache_salt(applied: Applied, client_salt: str | None) -> str:
    """A salt unique to (adapter, version, strength) and the client's own salt.

    vLLM hashes `cache_salt` into the first KV block's hash, so prefixes computed under one steering
    setting are reused only by requests with the very same setting. Hashed to stay within vLLM's
    128-character, no-'/' limit whatever the client sent.
    """
    key = json.dumps([applied.adapter, applied.version, repr(applied.strength), client_salt])
    return "fairsteer-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def rewrite(body: dict[str, Any], applied: Applied) -> dict[str, Any]:
    """The body vLLM receives: public fields removed, the internal keys and cache_salt set when steered.

    A client's own values under the internal names are always overwritten (or removed when unsteered),
    so the validated setting is the only one the engine ever sees.
    """
    out = {k: v for k, v in body.items() if k not in (STRENGTH_FIELD, ADAPTER_FIELD)}
    xargs = {k: v for k, v in (_get_xargs(body)).items()
             if k not in (STRENGTH_FIELD, ADAPTER_FIELD, *INTERNAL_KEYS)}
    if applied.steered:
        xargs[INTERNAL_ADAPTER_KEY] = applied.adapter
        xargs[INTERNAL_STRENGTH_KEY] = applied.strength
        client_salt = body.get("cache_salt")
        if client_salt is None or (isinstance(client_salt, str) and client_salt):
            out["cache_salt"] = cache_salt(applied, client_salt)
        # else: left as sent, for vLLM to reject with its own 400 naming cache_salt
    if xargs:
        out["vllm_xargs"] = xargs
    else:
        out.pop("vllm_xargs", None)
    return out
