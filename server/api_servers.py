"""Several API server processes over one engine (`-- --api-server-count N`), each one fairsteer's app.

vLLM's own `vllm serve --api-server-count N` (vllm/entrypoints/cli/serve.py `run_multi_api_server`)
starts the engine in this process's children, then N API processes that share the listening socket and
each connect to the engine as a client; every one of them runs vLLM's plain app. This is the same
sequence with fairsteer's app in every API process (server/app.py `serve`, hence `install`: the
middleware, the steering routes and the start-up check of the engine's slot table):

    parent        settings, socket bound (SO_REUSEPORT), engine core + workers launched, N children
    API child i   server/app.py `api_server_process`: group metrics set up, `serve(args, settings,
                  socket, client_config)` -> uvicorn

Every API process validates and pins against the engine's adapter table. With --adapter-dir an admin
change made through one process is committed in the engine (a generation, compare-and-swap) and announced
in shared memory created here before the processes are spawned (server/adapter_ledger.py: the generation,
server-wide in-flight counts per slot, the admit and change locks); the other processes re-read the
engine's table before they admit their next request (server/admin.py AdapterSlots.sync).
"""

import argparse
import signal
from collections.abc import Callable
from typing import Any

from server.adapter_ledger import AdapterLedger
from server.settings import ServeSettings


def api_server_count(args: argparse.Namespace) -> int:
    return int(getattr(args, "api_server_count", None) or 1)


def run_api_servers(args: argparse.Namespace, settings: ServeSettings, target: Callable) -> None:
    """Serve with `args.api_server_count` API processes until stopped (SIGINT/SIGTERM).

    `target(listen_address, sock, args, client_config)` runs in each spawned API process (importable by
    name: server.app.api_server_process); it finds the settings in `args.fairsteer_settings`.
    """
    import vllm
    from vllm.entrypoints.launchers.launcher import setup_server
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor
    from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus
    from vllm.v1.utils import APIServerProcessManager, wait_for_completion_or_failure

    count = api_server_count(args)
    setup_multiprocess_prometheus()  # before the children start: they inherit the directory
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    listen_address, sock = setup_server(args, reuse_port=True)
    engine_args = vllm.AsyncEngineArgs.from_cli_args(args)
    engine_args._api_process_count, engine_args._api_process_rank = count, -1
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    listeners = bind_engine_zmq_listeners(vllm_config, count)
    args.fairsteer_settings = settings  # travels to each child with the arguments (pickled by spawn)
    capacity = settings.admin.slot_capacity if settings.admin else len(settings.registry.adapters)
    args.fairsteer_ledger = AdapterLedger(capacity)  # shared memory: generation, in-flight counts, locks
    with launch_core_engines(vllm_config, Executor.get_class(vllm_config), not engine_args.disable_log_stats,
                             listeners.addresses) as launch:
        api_servers = APIServerProcessManager(
            listen_address=listen_address, sock=sock, args=args, num_servers=count,
            input_listeners=listeners.inputs, output_listeners=listeners.outputs,
            target_server_fn=target,
            stats_update_address=launch.coordinator.get_stats_publish_address() if launch.coordinator else None,
            tensor_queue=launch.tensor_queue)
        launch.watched_frontend_processes = api_servers.processes
    try:
        wait_for_completion_or_failure(api_server_manager=api_servers, engine_manager=launch.engine_manager,
                                       coordinator=launch.coordinator)
    finally:
        timeout = vllm_config.shutdown_timeout if stopping else None
        api_servers.shutdown(timeout=timeout)
        if launch.engine_manager:
            launch.engine_manager.shutdown(timeout=timeout)
        if launch.coordinator:
            launch.coordinator.shutdown(timeout=timeout)
        sock.close()

