"""The glue of issue 6 into `fairsteer serve`: flags, start-up checks, and what is installed on the app.

    add_flags(parser)                 --api-key --admin-key --max-request-bytes --adapter-dir --max-adapters
                                      --drain-timeout
    configure(args, ...) -> kwargs    in `fairsteer serve` before the engine starts: validates the flags
                                      (UsageError naming the fix) and adds the engine kwargs run-time
                                      loading needs (the steered model even with no adapter yet, the
                                      worker extension of server.vllm_plugin.reload)
    await install(app, engine)        once the engine runs: the HTTP-level drain on SIGTERM (server.drain,
                                      outermost), the security middleware, the admin routes and version
                                      pinning, health that also checks adapter files, and
                                      `fairness_strength`/`steering` in the OpenAPI schema

Keys are better given through FAIRSTEER_API_KEY / FAIRSTEER_ADMIN_KEY than on the command line, where
other local users can read them in the process list.
"""

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.drain import install_drain
from server.security import (
    DEFAULT_MAX_REQUEST_BYTES,
    SecuritySettings,
    install_security,
    route_path,
    send_error,
)

if TYPE_CHECKING:  # adapters.spec imports torch; `fairsteer --help` imports this module
    from adapters.spec import ModelIdentity


@dataclass
class _Config:
    security: SecuritySettings
    admin: "object | None" = None     # server.admin.AdminSettings when --adapter-dir is given
    identity: "object | None" = None  # the served model's adapters.spec.ModelIdentity


_config: _Config | None = None
# vLLM's default (0) aborts in-flight requests on SIGTERM, cutting streams mid-answer; a rolling restart
# should let them finish.
DEFAULT_DRAIN_S = 30


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on the API (or set FAIRSTEER_API_KEY)")
    p.add_argument("--admin-key", default=None, metavar="KEY",
                   help="the key for /v1/admin adapter management (or set FAIRSTEER_ADMIN_KEY)")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                   help=f"refuse larger request bodies with HTTP 413 (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--adapter-dir", action="append", default=[], metavar="DIR",
                   help="enable loading/replacing/unloading adapters at run time from files in DIR "
                        "(repeatable; needs --admin-key)")
    p.add_argument("--max-adapters", type=int, default=8, metavar="N",
                   help="most adapters loaded at once with --adapter-dir (default 8)")
    p.add_argument("--drain-timeout", type=int, default=DEFAULT_DRAIN_S, metavar="S",
                   help="on SIGTERM/SIGINT, let in-flight requests finish for up to S seconds (vLLM's "
                        f"--shutdown-timeout; default {DEFAULT_DRAIN_S}, 0 aborts them)")


def configure(args: argparse.Namespace, model_path: str, identity: "ModelIdentity", table: dict[str, str],
              kwargs: dict, options: list[str]) -> dict:
    """Check the flags; return the engine kwargs with the drain timeout and what run-time adapter loading
    needs."""
    from server.cli import UsageError
    from server.serve_command import option_value

    global _config
    try:
        security = SecuritySettings.from_options(args.api_key, args.admin_key, args.max_request_bytes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _config = _Config(security)
    if security.api_key and os.environ.get("VLLM_SERVER_DEV_MODE", "0") not in ("", "0"):
        raise UsageError("VLLM_SERVER_DEV_MODE opens vLLM's engine-control routes (collective_rpc, weight "
                         "updates, sleep) to every API-key holder; unset it on a server with an API key")
    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout must be >= 0 seconds; got {args.drain_timeout}")
    if option_value(options, "--shutdown-timeout") is None:
        kwargs = {**kwargs, "shutdown_timeout": args.drain_timeout}
    if not args.adapter_dir:
        return kwargs
    from server.admin import AdminSettings
    from server.vllm_plugin.reload import EXTENSION_FQCN

    if security.admin_key is None:
        raise UsageError("--adapter-dir enables /v1/admin/adapters, which needs an admin key: add "
                         "--admin-key KEY or set FAIRSTEER_ADMIN_KEY")
    dirs = []
    for folder in args.adapter_dir:
        if not Path(folder).is_dir():
            raise UsageError(f"--adapter-dir {folder!r} is not a directory")
        dirs.append(Path(folder).resolve())
    if not 1 <= args.max_adapters <= 64:
        raise UsageError(f"--max-adapters must be between 1 and 64; got {args.max_adapters}")
    if len(table) > args.max_adapters:
        raise UsageError(f"{len(table)} --adapter given but --max-adapters is {args.max_adapters}")
    if option_value(options, "--api-server-count") not in (None, "1"):
        raise UsageError("--adapter-dir keeps adapter versions in one API server process; drop "
                         "--api-server-count or set it to 1 (run more replicas behind a load balancer instead)")
    from server import vllm_plugin
    from server.admin import slot_capacity

    # Every site gets its adapter rows when the model is built (before compilation or CUDA-graph capture).
    kwargs = {**kwargs, **vllm_plugin.engine_kwargs(model_path, table, slot_capacity(args.max_adapters))}
    if not kwargs.get("hf_overrides"):
        raise UsageError("--adapter-dir: fairsteer cannot steer this model's architecture in vLLM")
    _config.admin = AdminSettings(tuple(dirs), args.max_adapters)
    _config.identity = identity
    return {**kwargs, "worker_extension_cls": EXTENSION_FQCN}


async def install(app, engine_client) -> None:
    """Install everything on vLLM's app (after `add_steering`, before serving)."""
    from starlette.middleware import Middleware

    config = _config or _Config(SecuritySettings())
    if config.admin is not None:
        from server.admin import AdapterManager, PinMiddleware, add_admin_routes

        manager = AdapterManager(app, engine_client, config.identity, config.admin)
        await manager.start()
        add_admin_routes(app, manager)
        app.user_middleware.append(Middleware(PinMiddleware, manager=manager))  # innermost
    app.user_middleware.insert(0, Middleware(AdapterFileHealth, get_registry=lambda: app.state.fairsteer_registry))
    install_security(app, config.security)
    install_drain(app, engine_client)  # outermost: counts every request the server accepts
    _add_steering_to_schema(app)


class AdapterFileHealth:
    """GET /health also fails (503, naming the file) when a loaded adapter's file has vanished.

    The copy in memory keeps serving, but the server could not restart or reload it: an operator must know.
    """

    def __init__(self, app, get_registry):
        self.app, self.get_registry = app, get_registry

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and route_path(scope) == "/health":
            for name, adapter in self.get_registry().adapters.items():
                if not os.path.isfile(adapter.path):
                    message = (f"adapter {name!r}: its file {adapter.path} has vanished; the loaded copy "
                               "keeps serving but a restart would fail. Restore the file or reload the adapter")
                    return await send_error(send, 503, message)
        await self.app(scope, receive, send)


STEERING_PROPERTIES = {
    "fairness_strength": {"type": "number", "minimum": 0, "title": "Fairness Strength",
                          "description": "Steering strength ω (0 = base model, 1 = the trained map), up to "
                                         "the server's maximum; omitted: the operator's default"},
    "steering": {"type": "string", "title": "Steering",
                 "description": "Adapter name (GET /v1/steerings); omitted: the server's default adapter"},
}


def _add_steering_to_schema(app) -> None:
    """Document the two fields on the completion routes' request bodies (vLLM's schema lacks them)."""
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.get("components", {}).get("schemas", {})
        for path in ("/v1/completions", "/v1/chat/completions"):
            content = (schema.get("paths", {}).get(path, {}).get("post", {}).get("requestBody", {})
                       .get("content", {}).get("application/json", {}))
            refs = [content.get("schema", {})] + content.get("schema", {}).get("anyOf", [])
            for ref in refs:
                target = components.get(ref.get("$ref", "").rsplit("/", 1)[-1], {})
                target.setdefault("properties", {}).update(STEERING_PROPERTIES)
        return schema

    app.openapi = openapi
