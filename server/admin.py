"""Adapters at run time, front end: the engine's slot table, `/v1/admin/adapters` and version pinning.

    GET    /v1/admin/adapters          slots: live and draining versions, in-flight requests, limits
    PUT    /v1/admin/adapters/{name}   body {"file": "x.safetensors"}: load or replace `name`
    DELETE /v1/admin/adapters/{name}   unload `name` (not the default adapter)

Files come only from the configured `--adapter-dir` folders: `file` is a relative path, resolved (symlinks
included) and refused unless it stays inside one of them. Files are read with safetensors (never
unpickled) and validated against the served model; a file that fails is refused with the reason (HTTP
400) and the version already loaded keeps serving. At most `--max-adapters` adapters are loaded.

Atomicity. Every loaded version owns an engine slot named "NAME@VERSION" (`engine_boundary.slot_name`).
The steering middleware resolves a request against the current registry and, with no await in between,
writes that version's slot into the request and counts it in flight (`AdapterSlots.admit`) until its
response ends. A replace writes a free slot, then swaps the registry: new requests get the new version,
requests already admitted finish on the old one, whose slot is reused only once none of them is left.

Several API processes (`--api-server-count N`): the engine's table is the one source of truth. A change
holds a server-wide lock, writes and checks the slot, then commits the new set in every engine worker
(compare-and-swap on a generation); every other process re-reads the engine's table before it admits its
next request, and in-flight counts are server-wide (server/adapter_ledger.py).
"""

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from adapters import io
from adapters.spec import AdapterFormatError, ModelIdentity
from server.adapter_ledger import AdapterLedger
from server.asgi import BodyError, openai_error, parse_json
from server.engine_boundary import FREE_SLOT, adapter_name_problem, slot_name
from server.engine_tables import slot_problems, table_problems
from server.errors import ServeConfigError
from server.registry import LoadedAdapter, SteeringRegistry
from server.settings import AdminSettings
from server.vllm_plugin.processor import publish_slot_names

logger = logging.getLogger("fairsteer.admin")


class AdminError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class AdapterSlots:
    """The engine's adapter slots as this API process sees them, and the requests in flight on each.

    Slot k (1-based) holds `names[k-1]`, FREE_SLOT when empty. Without --adapter-dir the table is the
    start-up adapters and never changes; with it, `AdapterAdmin` writes slots at run time. The engine's
    table is the one source of truth: with several API processes (`ledger` shared between them,
    server/adapter_ledger.py) a process whose copy is older than the last change re-reads it (`sync`)
    before it admits a request, and in-flight counts are server-wide.

    `holder.fairsteer_registry` is the registry requests are resolved against (the app's state).
    """

    def __init__(self, engine_client, registry: SteeringRegistry, capacity: int,
                 ledger: AdapterLedger | None = None, holder: Any = None):
        self.engine = engine_client
        self.names = [a.slot for a in registry.adapters.values()]
        self.names += [FREE_SLOT] * (capacity - len(self.names))
        self.ledger = ledger or AdapterLedger(capacity)
        self.holder = holder or SimpleNamespace()
        self.holder.fairsteer_registry = registry
        self.generation = 0  # of the engine table this copy was read from; 0: the start-up table
        self._sync_lock = asyncio.Lock()
        publish_slot_names(tuple(self.names))

    async def tables(self) -> list[dict[str, Any]]:
        """Every engine worker's slot table (one per tensor/pipeline-parallel rank)."""
        return await self.engine.collective_rpc("fairsteer_slot_table")

    async def check_engine(self, sites: tuple[str, ...] | None = None) -> None:
        """Every engine worker must hold exactly this table, and together steer `sites`, before the server
        accepts a request."""
        problems = table_problems(await self.tables(), self.names, sites)
        if problems:
            raise ServeConfigError("the engine and the front end disagree on the adapter table: "
                                   + "; ".join(problems))

    async def sync(self) -> None:
        """Re-read the engine's table if another API process changed it since this copy was read."""
        if self.generation >= self.ledger.generation:
            return
        async with self._sync_lock:
            if self.generation < self.ledger.generation:
                await self._reread()

    async def _reread(self) -> None:
        tables = await self.tables()
        first = tables[0]
        problems = table_problems(tables, first["slots"], None)
        problems += [f"engine worker {t.get('rank')} is at adapter table generation {t['generation']}, not "
                     f"{first['generation']}" for t in tables if t["generation"] != first["generation"]]
        if problems or first["live"] is None:
            raise AdminError(503, "the engine's adapter table cannot be read consistently: "
                                  f"{'; '.join(problems) or 'no adapter set was committed'}; retry")
        current = self.holder.fairsteer_registry
        adapters = {}
        for name, entry in first["live"]["adapters"].items():
            known = current.adapters.get(name)
            if known is not None and known.version == entry["version"]:
                adapters[name] = known
            else:
                adapters[name] = await asyncio.to_thread(_described, name, entry["file"], entry["version"])
        registry = replace(current, adapters=adapters, default_adapter=first["live"]["default_adapter"])
        self._publish(first["slots"], registry, first["generation"])

    def _publish(self, names: list[str], registry: SteeringRegistry, generation: int) -> None:
        """Take a table of the engine's as this process's copy: validation, resolution, metrics."""
        self.names = list(names)
        publish_slot_names(tuple(self.names))
        self.holder.fairsteer_registry = registry
        self.generation = generation
        try:
            from server import group_metrics

            group_metrics.set_loaded_adapters(registry.adapters)
        except Exception:
            logger.exception("group metrics could not record the new adapter set")

    def admit(self, slot: str | None) -> bool:
        """Count a request on `slot` (None: unsteered) in flight until `release`; False when another API
        process changed the table since this copy was read (then `sync` and resolve again)."""
        return self.ledger.admit(self._index(slot), self.generation)

    def release(self, slot: str | None) -> None:
        self.ledger.release(self._index(slot))

    def _index(self, slot: str | None) -> int | None:
        return None if slot is None else self.names.index(slot) + 1

    @asynccontextmanager
    async def changing(self):
        """One admin change at a time, server-wide, made against the engine's latest table."""
        async with self.ledger.changing():
            await self.sync()
            yield

    def free_slot(self, live: set[str]) -> int:
        for k, name in enumerate(self.names, start=1):
            # Not live: no API process with a current copy admits to it; counted 0: none is in flight.
            if name == FREE_SLOT or (name not in live and self.ledger.in_flight(k) == 0):
                return k
        raise AdminError(409, "every adapter slot holds a live version or one still serving requests; "
                              "retry once in-flight requests finish")

    async def write(self, slot: int, name: str, spec) -> None:
        """Write `spec` into every worker's slot `slot` under `name`, check that every worker holds it,
        then tell the front-end checks. Raises AdminError (500) when a worker disagrees: the slot is then
        cleared everywhere and stays unnamed, so no request can reach a half-written table."""
        await self.engine.collective_rpc("fairsteer_write_slot", args=(slot, name, list(spec.sites), spec.a.tolist(),
                                                                       spec.b.tolist(), self.generation))
        expected = [*self.names[:slot - 1], name, *self.names[slot:]]
        tables = await self.tables()
        hidden = spec.a.shape[1]
        problems = table_problems(tables, expected, None) + slot_problems(tables, slot, spec, hidden)
        if problems:
            raise AdminError(500, f"adapter {name!r} not loaded: {'; '.join(problems)}. "
                                  f"{await self._clear(slot, hidden)}")
        self.names[slot - 1] = name
        publish_slot_names(tuple(self.names))

    async def commit(self, registry: SteeringRegistry) -> None:
        """Make `registry` the served set: in every engine worker (compare-and-swap on the generation),
        then here, then for every other API process (the ledger's generation: they re-read)."""
        live = {"default_adapter": registry.default_adapter,
                "adapters": {n: {"file": a.path, "version": a.version} for n, a in registry.adapters.items()}}
        answers = await self.engine.collective_rpc("fairsteer_commit", args=(self.generation, live))
        generation = self.generation + 1
        if any(answer != generation for answer in answers):
            raise AdminError(500, f"the engine workers answered generations {answers} to a change from "
                                  f"generation {self.generation}; restart the server to rebuild the tables")
        self._publish(self.names, registry, generation)
        self.ledger.finish_change(generation)

    async def _clear(self, slot: int, hidden: int) -> str:
        """Free `slot` in every worker after a failed write; says whether that worked."""
        self.names[slot - 1] = FREE_SLOT
        publish_slot_names(tuple(self.names))
        try:
            await self.engine.collective_rpc("fairsteer_write_slot", args=(slot, FREE_SLOT, [], [], []))
            tables = await self.tables()
            problems = table_problems(tables, self.names, None) + slot_problems(tables, slot, None, hidden)
        except Exception as exc:  # noqa: BLE001 - report it with the original failure
            problems = [repr(exc)]
        if problems:
            logger.error("adapter slot %d could not be cleared in every engine worker: %s", slot, problems)
            return (f"Slot {slot} could not be cleared in every worker ({'; '.join(problems)}); it stays "
                    "unnamed, so no request uses it; restart the server to rebuild the tables")
        return f"Slot {slot} was cleared in every worker; the adapters loaded before keep serving"

    def describe(self, live: set[str]) -> list[dict[str, Any]]:
        def state(n: str) -> str:
            return "free" if n == FREE_SLOT else "live" if n in live else "draining"

        return [{"slot": k, "name": n.split("@")[0] if n else None, "version": n.split("@")[1] if n else None,
                 "state": state(n), "in_flight": self.ledger.in_flight(k) if n else 0}
                for k, n in enumerate(self.names, start=1)]


class AdapterAdmin:
    """Load, replace and unload adapters from --adapter-dir files; one change at a time."""

    def __init__(self, app: FastAPI, slots: AdapterSlots, identity: ModelIdentity, settings: AdminSettings):
        self.app, self.slots, self.identity, self.settings = app, slots, identity, settings

    @property
    def registry(self) -> SteeringRegistry:
        return self.app.state.fairsteer_registry

    def live(self) -> set[str]:
        return {a.slot for a in self.registry.adapters.values()}

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

    async def load(self, name: str, file: Any) -> dict[str, Any]:
        _check_name(name)
        path = self.resolve_file(file)
        async with self.slots.changing():
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
            # The engine and the front-end checks know the new slot before any request can name it.
            await self.slots.write(self.slots.free_slot(self.live()), slot_name(name, spec.version), spec)
            loaded = LoadedAdapter(name, str(path), spec.version, spec.sites, spec.num_parameters, spec.meta)
            adapters = {**registry.adapters, name: loaded}
            default = registry.default_adapter or name
            await self._commit(replace(registry, adapters=adapters, default_adapter=default))
        return {"adapter": name, "version": spec.version, "replaced": old.version if old else None,
                "unchanged": False}

    async def unload(self, name: str) -> dict[str, Any]:
        _check_name(name)
        async with self.slots.changing():
            registry = self.registry
            if name not in registry.adapters:
                raise AdminError(404, f"adapter {name!r} is not loaded", "name")
            if name == registry.default_adapter:
                raise AdminError(409, f"{name!r} is the default adapter (requests without `steering` use "
                                      "it); replace it instead of unloading it", "name")
            adapters = {k: v for k, v in registry.adapters.items() if k != name}
            version = registry.adapters[name].version
            await self._commit(replace(registry, adapters=adapters))
        return {"adapter": name, "unloaded": version}

    async def _commit(self, registry: SteeringRegistry) -> None:
        """Record the new set (this process only: changes are serialised server-wide), then commit it in
        the engine and swap: requests see the old registry or the new one, never a mix."""
        record = self.settings.record
        if record is not None:
            try:
                record.save(registry.adapters, registry.default_adapter)
            except OSError as exc:
                raise AdminError(503, f"the change could not be recorded in {record.path} ({exc}), so it was "
                                      "not made; the adapters loaded before keep serving") from None
        try:
            await self.slots.commit(registry)
        except BaseException:
            if record is not None:  # the engine still serves the old set: so must a restart
                record.save(self.registry.adapters, self.registry.default_adapter)
            raise

    def describe(self) -> dict[str, Any]:
        return {"object": "list", "data": self.slots.describe(self.live()),
                "max_adapters": self.settings.max_adapters,
                "adapter_dirs": [str(d) for d in self.settings.adapter_dirs]}


def _described(name: str, file: str, version: str) -> LoadedAdapter:
    """The front end's description of an adapter another API process loaded (the engine names its file)."""
    try:
        spec = io.load(file)
    except AdapterFormatError as exc:
        raise AdminError(503, f"adapter {name!r} ({file}) loaded by another API process cannot be read here: "
                              f"{exc}") from None
    if spec.version != version:
        raise AdminError(503, f"adapter {name!r}: {file} holds version {spec.version}, but the engine serves "
                              f"version {version} (the file changed after it was loaded); load it again")
    return LoadedAdapter(name, file, version, spec.sites, spec.num_parameters, spec.meta)


def _check_name(name: str) -> None:
    if problem := adapter_name_problem(name):
        raise AdminError(400, problem, "name")


def _error(exc: AdminError) -> JSONResponse:
    return JSONResponse(openai_error(exc.status, exc.message, exc.param), status_code=exc.status)


def add_admin_routes(app: FastAPI, manager: AdapterAdmin) -> None:
    async def list_slots() -> JSONResponse:
        try:
            await manager.slots.sync()
        except AdminError as exc:
            return _error(exc)
        return JSONResponse(manager.describe())

    async def put_adapter(name: str, request: Request) -> JSONResponse:
        try:
            body = parse_json(await request.body())
            if not isinstance(body, dict):
                raise AdminError(400, 'the body must be a JSON object {"file": "NAME.safetensors"}', "file")
            return JSONResponse(await manager.load(name, body.get("file")))
        except BodyError as exc:
            return _error(AdminError(400, str(exc)))
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
