"""The tests' and bench/ scripts' server launcher: `server.launcher` (the one launcher, also used by
`fairsteer eval --task chat`), with one engine thread per server, and plain vLLM as the reference.

Fairsteer and plain vLLM get the same engine options, so the two differ only by fairsteer:

    with ServerProcess(fairsteer_argv(model, {"boost": path}, port), port, log) as server:
        server.url   # "http://127.0.0.1:PORT"
"""

import sys
from typing import ClassVar

from server import launcher
from server.launcher import ServerStartError, fairsteer_argv, free_port
from server.settings import engine_defaults

__all__ = ["ServerProcess", "ServerStartError", "fairsteer_argv", "free_port", "plain_vllm_argv"]


class ServerProcess(launcher.ServerProcess):
    # Tests and benchmarks start servers side by side on 2 cores: one OpenMP thread each unless the
    # caller's environment says otherwise.
    ENV_DEFAULTS: ClassVar[dict[str, str]] = {**launcher.ServerProcess.ENV_DEFAULTS, "OMP_NUM_THREADS": "1"}


def plain_vllm_argv(model: str, port: int, *, engine_options: tuple = (), on_cpu: bool = True) -> list[str]:
    """vLLM's own server with the options `fairsteer serve` would use: the honest reference."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), *engine_defaults(model, on_cpu), *engine_options]
