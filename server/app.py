"""Starting vLLM's own OpenAI server with fairsteer's additions, from `ServeSettings`.

The sequence is vLLM's `run_server` (vllm/entrypoints/launchers/api_server/entry.py), written out so that
fairsteer's routes and middleware are installed on the app between `build_app` and serving:

    engine args = vLLM's parser over settings.engine_options, then settings.engine_kwargs
    socket bound first (as vLLM does), engine started, app built, `install` (below), uvicorn serves

The request path, outermost first (declared once, in `install`):

    DrainMiddleware      counts every accepted request; 503 once draining (server/drain.py)
    SecurityMiddleware   keys and body size, before anything reads a body (server/security.py)
    AdapterFileHealth    /health fails when a loaded adapter's file vanished (server/health.py)
    vLLM's middleware    CORS, request ids, ...
    SteeringMiddleware   parses the body once, validates, pins the adapter version, rewrites for the
                         engine, annotates the answer (server/steering_api.py)
    vLLM's routes        /v1/completions, /v1/chat/completions, ... -> the engine

Everything else (routes, streaming, metrics, health, shutdown) is vLLM's.
"""

import argparse
import os
import signal
from typing import Any

from server.errors import ServeConfigError
from server.settings import ServeSettings


def run(settings: ServeSettings) -> int:
    """Serve until stopped (SIGINT/SIGTERM). Raises ServeConfigError when the server cannot start."""
    import uvloop

    from server.api_servers import api_server_count, run_api_servers

    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # as vLLM's own CLI does
    args = build_vllm_args(settings.model_path, settings.host, settings.port, list(settings.engine_options),
                           settings.engine_kwargs)
    try:
        if api_server_count(args) > 1:  # one engine, several API processes, each with `install`
            run_api_servers(args, settings, api_server_process)
        else:
            uvloop.run(serve(args, settings))
    except (KeyboardInterrupt, SystemExit, ServeConfigError):
        raise
    except OSError as exc:
        raise ServeConfigError(f"cannot listen on {settings.host}:{settings.port} ({exc}); pick another "
                               "--port") from None
    except Exception as exc:  # noqa: BLE001 - the engine logged the cause above; say so plainly
        raise ServeConfigError(f"the vLLM engine failed to start: {exc}. The log above names the cause") from None
    return 0


def build_vllm_args(model: str, host: str, port: int, engine_options: list[str],
                    engine_kwargs: dict[str, Any]) -> argparse.Namespace:
    """vLLM's serve arguments: its own parser, then the plugin's engine kwargs merged in.

    `engine_options` are vLLM command-line options (ours first, the user's after, so the user's win).
    `hf_overrides` dicts are merged and `logits_processors` lists concatenated, so a user's own values
    survive beside the plugin's.
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="fairsteer serve -- (vLLM engine options)"))
    args = parser.parse_args(["--model", model, "--host", host, "--port", str(port), *engine_options])
    for key, value in engine_kwargs.items():
        if not hasattr(args, key):
            raise RuntimeError(f"the fairsteer plugin asked for an unknown vLLM engine argument {key!r}")
        current = getattr(args, key)
        if key == "hf_overrides" and isinstance(current, dict):
            value = {**current, **value}
        elif key == "logits_processors" and current:
            value = list(current) + [p for p in value if p not in current]
        setattr(args, key, value)
    validate_parsed_serve_args(args)
    return args


def api_server_process(listen_address: str, sock, args: argparse.Namespace, client_config: dict) -> None:
    """One of several API processes (spawned by vLLM's APIServerProcessManager, server/api_servers.py):
    fairsteer's app on the shared socket, connected to the parent's engine."""
    import uvloop
    from vllm.utils.system_utils import decorate_logs, set_process_title

    from server import group_metrics

    settings: ServeSettings = args.fairsteer_settings
    set_process_title("APIServer", str(client_config.get("client_index", 0)))
    decorate_logs()
    # Module state of the parent's start-up that a spawned process does not inherit.
    group_metrics.configure(settings.group_lexicon, [settings.registry.model])
    group_metrics.set_loaded_adapters(settings.registry.adapters)
    uvloop.run(serve(args, settings, (listen_address, sock), client_config))


async def serve(args: argparse.Namespace, settings: ServeSettings, listening: tuple[str, Any] | None = None,
                client_config: dict[str, Any] | None = None) -> None:
    """Run the server until it is stopped (SIGINT/SIGTERM); raises if the engine fails to start.

    Alone, it binds the socket and starts the engine. As one of several API processes
    (server/api_servers.py) it gets the shared socket as `listening` (address, socket) and vLLM's
    `client_config`, which connects it to the engine the parent process started.
    """
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    def interrupt_start_up(*_: Any) -> None:  # uvicorn installs its own handlers once it runs
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, interrupt_start_up)
    listen_address, sock = listening or setup_server(args, reuse_port=False)
    client_config = dict(client_config or {})
    loads = client_config.pop("api_server_loads", None)  # vLLM's least-loaded accept between processes
    peer_loads = (loads, client_config["client_index"]) if loads is not None else None
    async with build_async_engine_client(args, client_config=client_config or None) as engine_client:
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        await install(app, engine_client, settings, getattr(args, "fairsteer_ledger", None))
        await init_app_state(engine_client, app.state, args, supported_tasks)
        _announce(settings.registry, listen_address)
        shutdown_task = await serve_http(
            app, sock=sock, enable_ssl_refresh=args.enable_ssl_refresh, peer_loads=peer_loads, host=args.host,
            port=args.port,
            log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE, ssl_keyfile=args.ssl_keyfile,
            ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
            ssl_ciphers=args.ssl_ciphers, h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
            h11_max_header_count=args.h11_max_header_count)
    try:
        await shutdown_task
    finally:
        sock.close()


async def install(app, engine_client, settings: ServeSettings, ledger=None) -> None:
    """fairsteer's routes and the middleware stack on vLLM's app (after build_app, before serving).

    `ledger`: the server/adapter_ledger.py state shared by several API processes (None: one process)."""
    from fastapi.responses import JSONResponse
    from starlette.middleware import Middleware

    from server.admin import AdapterAdmin, AdapterSlots, add_admin_routes
    from server.drain import Drain, DrainMiddleware
    from server.health import AdapterFileHealth, add_liveness_route
    from server.openapi import document_steering
    from server.security import SecurityMiddleware
    from server.steering_api import SteeringMiddleware

    def get_registry():
        return app.state.fairsteer_registry

    capacity = settings.admin.slot_capacity if settings.admin else len(settings.registry.adapters)
    slots = AdapterSlots(engine_client, settings.registry, capacity, ledger, holder=app.state)
    if settings.steered_engine:
        await slots.sync()  # another API process may already have changed the start-up set
        await slots.check_engine(steered_sites(settings))
    drain = Drain()
    engine_client.shutdown = drain.wrap_shutdown(engine_client.shutdown)

    async def list_steerings() -> JSONResponse:
        await slots.sync()
        return JSONResponse(get_registry().describe())

    app.add_api_route("/v1/steerings", list_steerings, methods=["GET"], tags=["fairsteer"],
                      summary="Loaded steering adapters with their metadata and calibration tables")
    add_liveness_route(app, engine_client)
    if settings.admin is not None:
        add_admin_routes(app, AdapterAdmin(app, slots, settings.identity, settings.admin))
    app.user_middleware = [
        Middleware(DrainMiddleware, drain=drain),
        Middleware(SecurityMiddleware, settings=settings.security),
        Middleware(AdapterFileHealth, get_registry=get_registry),
        *app.user_middleware,
        Middleware(SteeringMiddleware, get_registry=get_registry, slots=slots),
    ]
    if app.middleware_stack is not None:  # vLLM's SageMaker bootstrap builds the stack early; rebuild it
        app.middleware_stack = app.build_middleware_stack()
    document_steering(app)


def steered_sites(settings: ServeSettings) -> tuple[str, ...]:
    """The sites the engine's workers together steer (server/vllm_plugin/models.py install_steering)."""
    from adapters.sites import all_sites

    if settings.admin is not None:  # run-time loading: rows at every site from the start
        return all_sites(settings.identity.num_layers)
    return tuple(sorted({site for a in settings.registry.adapters.values() for site in a.sites}))


def _announce(registry, listen_address: str) -> None:
    if registry.adapters:
        names = ", ".join(f"{a.name} (version {a.version})" for a in registry.adapters.values())
        print(f"fairsteer: serving {registry.model} on {listen_address} with adapters {names}; default "
              f"adapter {registry.default_adapter}, default fairness_strength {registry.default_strength}, "
              f"maximum {registry.max_strength}", flush=True)
    else:
        print(f"fairsteer: serving {registry.model} UNSTEERED on {listen_address} (no adapter loaded; "
              "requests with fairness_strength > 0 get HTTP 400)", flush=True)
