"""The steering fields of an OpenAI request: validation and translation for the engine.

A client sends, at the top level of a `/v1/completions` or `/v1/chat/completions` body, or inside its
`vllm_xargs`:

    fairness_strength   number ω, 0 <= ω <= the server's maximum; omitted -> the operator's default
    steering            an adapter name; omitted -> the server's default adapter

`resolve` turns a parsed body into the `Applied` setting (or a `SteeringError` naming the field, which
becomes HTTP 400 in OpenAI's error shape); `rewrite` writes that setting into the body for vLLM:

    vllm_xargs.fairsteer_adapter    the engine slot of the adapter *version* validated against
                                    ("NAME@VERSION"): the request is pinned to it to its end
    vllm_xargs.fairsteer_strength   the strength
    cache_salt                      so prefix caching never shares KV across settings

A client may not send the internal keys (HTTP 400 naming the public field).

vLLM itself silently ignores unknown top-level fields; this module is why a request is never served
with its steering dropped. No vLLM import here: it is plain data, tested without an engine.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from server.engine_boundary import (
    ADAPTER_FIELD,
    INTERNAL_ADAPTER_KEY,
    INTERNAL_KEYS,
    INTERNAL_STRENGTH_KEY,
    STRENGTH_FIELD,
    json_type,
    slot_name,
    strength_problem,
)

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

    @property
    def slot(self) -> str | None:
        """The engine slot serving this request, or None when unsteered."""
        return slot_name(self.adapter, self.version) if self.steered else None

    def as_json(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "version": self.version, "strength": self.strength}

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-fairsteer-adapter", (self.adapter or "none").encode()),
                (b"x-fairsteer-version", (self.version or "none").encode()),
                (b"x-fairsteer-strength", repr(self.strength).encode())]


def _get_xargs(body: dict[str, Any]) -> dict[str, Any]:
    xargs = body.get("vllm_xargs")
    if xargs is None:
        return {}
    if not isinstance(xargs, dict):
        raise SteeringError(f"vllm_xargs must be a JSON object (a flat dict), not {json_type(xargs)}",
                            "vllm_xargs")
    return xargs


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
    if value is None:
        raise SteeringError(f"{STRENGTH_FIELD} must be a number, not null; omit it to use the server default "
                            f"({policy.default_strength})", STRENGTH_FIELD)
    problem = strength_problem(value, STRENGTH_FIELD, policy.max_strength)
    if problem:
        raise SteeringError(problem, STRENGTH_FIELD)
    return float(value)


def _check_adapter(value: Any, policy: Policy) -> str:
    name = ADAPTER_FIELD
    if not isinstance(value, str):
        raise SteeringError(f"{name} must be an adapter name (a string), not {json_type(value)}; "
                            "omit it to use the server's default adapter", name)
    if value not in policy.adapters:
        loaded = ", ".join(sorted(policy.adapters)) or "none (this server runs unsteered)"
        raise SteeringError(f"unknown steering adapter {value!r}; loaded adapters: {loaded}. "
                            "GET /v1/steerings lists them", name)
    return value


def _refuse_lookalikes(body: dict[str, Any], xargs: dict[str, Any]) -> None:
    """A misspelt steering field would be silently ignored by vLLM, and an internal key would be
    overwritten: refuse both, naming the public field."""
    for where, keys in (("", body), ("vllm_xargs.", xargs)):
        for key in keys:
            if not isinstance(key, str) or key in (STRENGTH_FIELD, ADAPTER_FIELD):
                continue
            if key in INTERNAL_KEYS:
                public = STRENGTH_FIELD if key == INTERNAL_STRENGTH_KEY else ADAPTER_FIELD
                raise SteeringError(f"{where}{key} is fairsteer's internal engine key, which clients may not "
                                    f"send; use {public!r}", f"{where}{key}")
            if _LOOKALIKE.search(key):
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

    `resolve` has refused internal keys sent by a client, so the validated setting is the only one the
    engine ever sees.
    """
    out = {k: v for k, v in body.items() if k not in (STRENGTH_FIELD, ADAPTER_FIELD)}
    xargs = {k: v for k, v in (_get_xargs(body)).items() if k not in (STRENGTH_FIELD, ADAPTER_FIELD)}
    if applied.steered:
        xargs[INTERNAL_ADAPTER_KEY] = applied.slot
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
