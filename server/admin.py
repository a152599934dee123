"""Adapters at run time, front end: `/v1/admin/adapters` (admin key) and version pinning of requests.

    GET    /v1/admin/adapters          slots: live and draining versions, in-flight requests, limits
    PUT    /v1/admin/adapters/{name}   body {"file": "x.safetensors"}: load or replace `name`
    DELETE /v1/admin/adapters/{name}   unload `name` (not the default adapter)

Files come only from the configured `--adapter-dir` folders: `file` is a relative path, resolved (symlinks
included) and refused unless it stays inside one of them. Files are read with safetensors (never
unpickled) and validated against the served model; a file that fails is refused with the reason (HTTP
400) and the version already loaded keeps serving. At most `--max-adapters` adapters are loaded.

Atomicity. Every loaded version owns an engine slot under the name "NAME@VERSION"; `PinMiddleware`, just
inside the steering middleware, rewrites each request's internal adapter name to the versioned name of
the registry that request was validated against (the two run with no await in between, so they see the
same registry) and counts it in flight until its response ends. A replace writes a free slot, then swaps
the registry: new requests get the new version, requests already admitted finish on the old one, whose
slot is reused only once none of them is left. Responses state the version (x-fairsteer-version).
"""

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from adapters import io
from adapters.spec import AdapterFormatError, ModelIdentity
from server.protocol import INTERNAL_ADAPTER_KEY
from server.registry import LoadedAdapter, adapter_name_problem
from server.security import openai_error, route_path
from server.steering_api import STEERED_PATHS
from server.vllm_plugin.processor import FREE

logger = logging.getLogger("fairsteer.admin")


class AdminError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass(frozen=True)
class AdminSettings:
    adapter_dirs: tuple[Path, ...]   # resolved folders adapter files may come from
    max_adapters: int = 8


def slot_capacity(max_adapters: int) -> int:
    """Engine slots for `max_adapters` adapters: each may have one old version still draining."""
    return 2 * max_adapters


def versioned(name: str, version: str) -> str:
    return f"{name}@{version}"


class AdapterManager:
    """Slots of the engine's adapter tables and which versioned names are live, draining or free."""

    def __init__(self, app: FastAPI, engine_client, identity: ModelIdentity, settings: AdminSettings):
        self.app, self.engine, self.identity, self.settings = app, engine_client, identity, settings
        self.capacity = slot_capacity(settings.max_adapters)
        self.slots: list[str] = []                 # slot k (1-based) holds slots[k-1], FREE when empty
        self.pins: dict[str, str] = {}             # adapter name -> its live versioned name
        self.in_flight: Counter[str] = Counter()   # versioned name -> requests not yet answered
        self.lock = asyncio.Lock()

    @property
    def registry(self):
        return self.app.state.fairsteer_registry

    async def start(self) -> None:
        """Give the engine `capacity` slots and rename the start-up adapters to their versioned names."""
        names = [versioned(n, a.version) for n, a in self.registry.adapters.items()]
        if len(names) > self.settings.max_adapters:
            raise AdminError(400, f"{len(names)} adapters given at start-up; --max-adapters is "
                                  f"{self.settings.max_adapters}")
        await self.engine.collective_rpc("fairsteer_prepare", args=(self.capacity, names))
        self.slots = names + [FREE] * (self.capacity - len(names))
        self.pins = {n: versioned(n, a.version) for n, a in self.registry.adapters.items()}
        self._publish_names()

    def _publish_names(self) -> None:
        from server.vllm_plugin.processor import set_front_end_adapters

        set_front_end_adapters(tuple(self.slots))

    def resolve_file(self, file: Any) -> Path:
        if not isinstance(file, str) or not file:
            raise AdminError(400, "`file` must be a file name relative to an --adapter-dir", "file")
        relative = Path(file)
        if relative.is_absolute() or ".." in relative.parts or not file.endswith(".safetensors"):
            raise AdminError(400, f"`file` {file!r} must be a relative path to a .safetensors file inside "
                                  "an --adapter-dir, without '..'", "file")
        for folder in self.settings.adapter_dirs:
            try:
                path = (folder / relative).resolve()
                found = path.is_relative_to(folder) and path.is_file()
            except (OSError, ValueError) as exc:  # a name too long, a NUL byte, an unreadable folder
                raise AdminError(400, f"`file` {file!r} cannot be opened: {exc}", "file") from None
            if found:
                return path
        dirs = ", ".join(str(d) for d in self.settings.adapter_dirs)
        raise AdminError(404, f"no adapter file {file!r} in the adapter directories ({dirs})", "file")

    def _free_slot(self) -> int:
        live = set(self.pins.values())
        for k, name in enumerate(self.slots, start=1):
            if name == FREE or (name not in live and self.in_flight[name] == 0):
                return k
        raise AdminError(409, "every adapter slot holds a live version or one still serving requests; "
                              "retry once in-flight requests finish")

    async def load(self, name: str, file: Any) -> dict[str, Any]:
        _check_name(name)
        path = self.resolve_file(file)
        async with self.lock:
            registry = self.registry
            if name not in registry.adapters and len(registry.adapters) >= self.settings.max_adapters:
                raise AdminError(409, f"{len(registry.adapters)} adapters are loaded, the limit set by "
                                      "--max-adapters; unload one first")
            try:
                spec = await asyncio.to_thread(io.load, path, self.identity)
            except AdapterFormatError as exc:
                raise AdminError(400, f"adapter {name!r} not loaded: {exc}", "file") from None
            old = registry.adapters.get(name)
            if old is not None and old.version == spec.version:
                return {"adapter": name, "version": spec.version, "replaced": None, "unchanged": True}
            vname, slot = versioned(name, spec.version), self._free_slot()
            await self.engine.collective_rpc("fairsteer_write_slot",
                                             args=(slot, vname, list(spec.sites), spec.a.tolist(), spec.b.tolist()))
            self.slots[slot - 1] = vname
            self._publish_names()  # the engine and validation know the new name before any request uses it
            loaded = LoadedAdapter(name, str(path), spec.version, spec.sites, spec.num_parameters, spec.meta)
            adapters = {**registry.adapters, name: loaded}
            default = registry.default_adapter or name
            self._swap(replace(registry, adapters=adapters, default_adapter=default), name, vname)
        return {"adapter": name, "version": spec.version, "replaced": old.version if old else None,
                "unchanged": False}

    async def unload(self, name: str) -> dict[str, Any]:
        _check_name(name)
        async with self.lock:
            registry = self.registry
            if name not in registry.adapters:
                raise AdminError(404, f"adapter {name!r} is not loaded", "name")
            if name == registry.default_adapter:
                raise AdminError(409, f"{name!r} is the default adapter (requests without `steering` use "
                                      "it); replace it instead of unloading it", "name")
            adapters = {k: v for k, v in registry.adapters.items() if k != name}
            version = registry.adapters[name].version
            self._swap(replace(registry, adapters=adapters), name, None)
        return {"adapter": name, "unloaded": version}

    def _swap(self, registry, name: str, vname: str | None) -> None:
        """One assignment each: requests see either the old registry or the new one, never a mix."""
        if vname is None:
            self.pins.pop(name, None)
        else:
            self.pins[name] = vname
        self.app.state.fairsteer_registry = registry
        try:
            from server import group_metrics

            group_metrics.set_loaded_adapters(registry.adapters)
        except Exception:
            logger.exception("group metrics could not record the new adapter set")

    def describe(self) -> dict[str, Any]:
        live = set(self.pins.values())
        data = [{"slot": k, "name": n.split("@")[0] if n else None, "version": n.split("@")[1] if n else None,
                 "state": "free" if n == FREE else "live" if n in live else "draining",
                 "in_flight": self.in_flight[n] if n else 0} for k, n in enumerate(self.slots, start=1)]
        return {"object": "list", "data": data, "max_adapters": self.settings.max_adapters,
                "adapter_dirs": [str(d) for d in self.settings.adapter_dirs]}


def _check_name(name: str) -> None:
    if problem := adapter_name_problem(name):
        raise AdminError(400, problem, "name")


def _error(exc: AdminError) -> JSONResponse:
    return JSONResponse(json.loads(openai_error(exc.status, exc.message, exc.param)), status_code=exc.status)


def add_admin_routes(app: FastAPI, manager: AdapterManager) -> None:
    async def list_slots() -> JSONResponse:
        return JSONResponse(manager.describe())

    async def put_adapter(name: str, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            if not isinstance(body, dict):
                raise AdminError(400, 'the body must be a JSON object {"file": "NAME.safetensors"}', "file")
            return JSONResponse(await manager.load(name, body.get("file")))
        except AdminError as exc:
            return _error(exc)

    async def delete_adapter(name: str) -> JSONResponse:
        try:
            return JSONResponse(await manager.unload(name))
        except AdminError as exc:
            return _error(exc)

    tags = ["fairsteer admin"]
    app.add_api_route("/v1/admin/adapters", list_slots, methods=["GET"], tags=tags,
                      summary="Adapter slots: live and draining versions (admin key)")
    body_schema = {"type": "object", "required": ["file"], "properties": {"file": {
        "type": "string", "description": "an adapter file, relative to one of the --adapter-dir folders"}}}
    app.add_api_route("/v1/admin/adapters/{name}", put_adapter, methods=["PUT"], tags=tags,
                      summary="Load or replace an adapter from an --adapter-dir file (admin key)",
                      openapi_extra={"requestBody": {"required": True,
                                                     "content": {"application/json": {"schema": body_schema}}}})
    app.add_api_route("/v1/admin/adapters/{name}", delete_adapter, methods=["DELETE"], tags=tags,
                      summary="Unload an adapter (admin key)")


class PinMiddleware:
    """Innermost: pins each steered request to a versioned adapter name and counts it until answered."""

    def __init__(self, app, manager: AdapterManager):
        self.app, self.manager = app, manager

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in STEERED_PATHS:
            return await self.app(scope, receive, send)
        first = await receive()  # the steering middleware's replayed, already rewritten body
        body = first.get("body", b"")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        xargs = data.get("vllm_xargs") if isinstance(data, dict) else None
        name = xargs.get(INTERNAL_ADAPTER_KEY) if isinstance(xargs, dict) else None
        vname = self.manager.pins.get(name) if isinstance(name, str) else None
        if vname is None:
            return await self.app(scope, _once(first, receive), send)
        xargs[INTERNAL_ADAPTER_KEY] = vname
        body = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = dict(scope, headers=headers + [(b"content-length", str(len(body)).encode())])
        self.manager.in_flight[vname] += 1
        try:
            await self.app(scope, _once({"type": "http.request", "body": body, "more_body": False}, receive),
                           send)
        finally:
            self.manager.in_flight[vname] -= 1


def _once(message, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return message
        return await receive()

    return replayed
