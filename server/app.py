"""Starting vLLM's own OpenAI server with fairsteer's additions.

The sequence is vLLM's `run_server` (vllm/entrypoints/launchers/api_server/entry.py), written out so that
the steering middleware and `/v1/steerings` are installed on the app between `build_app` and serving:

    engine args = vLLM's parser over (our CPU/GPU defaults + the user's engine options) + the plugin's kwargs
    socket bound first (as vLLM does), engine started, app built, steering added, uvicorn serves

Everything else (routes, streaming, metrics, health, shutdown) is vLLM's.
"""

import argparse
import signal
from typing import Any

from server.registry import SteeringRegistry


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


async def serve(args: argparse.Namespace, registry: SteeringRegistry) -> None:
    """Run the server until it is stopped (SIGINT/SIGTERM); raises if the engine fails to start."""
    from vllm import envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server

    from server.steering_api import add_steering

    def interrupt_start_up(*_: Any) -> None:  # uvicorn installs its own handlers once it runs
        raise KeyboardInterrupt("terminated")

    signal.signal(signal.SIGTERM, interrupt_start_up)
    listen_address, sock = setup_server(args, reuse_port=False)
    async with build_async_engine_client(args) as engine_client:
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        app.state.fairsteer_registry = registry
        add_steering(app, lambda: app.state.fairsteer_registry)
        from server.reliability import install  # issue 6: auth, body limit, admin routes, health

        await install(app, engine_client)
        await init_app_state(engine_client, app.state, args, supported_tasks)
        _announce(registry, listen_address)
        shutdown_task = await serve_http(
            app, sock=sock, enable_ssl_refresh=args.enable_ssl_refresh, host=args.host, port=args.port,
            log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE, ssl_keyfile=args.ssl_keyfile,
            ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
            ssl_ciphers=args.ssl_ciphers, h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
            h11_max_header_count=args.h11_max_header_count)
    try:
        await shutdown_task
    finally:
        sock.close()


def _announce(registry: SteeringRegistry, listen_address: str) -> None:
    if registry.adapters:
        names = ", ".join(f"{a.name} (version {a.version})" for a in registry.adapters.values())
        print(f"fairsteer: serving {registry.model} on {listen_address} with adapters {names}; default "
              f"adapter {registry.default_adapter}, default fairness_strength {registry.default_strength}, "
              f"maximum {registry.max_strength}", flush=True)
    else:
        print(f"fairsteer: serving {registry.model} UNSTEERED on {listen_address} (no adapter loaded; "
              "requests with fairness_strength > 0 get HTTP 400)", flush=True)
