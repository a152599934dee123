"""Start a real server as a subprocess on 127.0.0.1, wait until it is healthy, stop it by its PID.

Used by the HTTP tests and the bench/ scripts, for fairsteer and for plain vLLM (the reference),
with the same engine options so the two differ only by fairsteer:

    with ServerProcess(fairsteer_argv(model, {"boost": path}, port), port, log) as server:
        server.url   # "http://127.0.0.1:PORT"
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from server.settings import engine_defaults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fairsteer_argv(model: str, adapters: dict[str, str], port: int, *, fairsteer_options: tuple = (),
                   engine_options: tuple = ()) -> list[str]:
    # The installed console script, as a user runs it.
    argv = [str(Path(sys.executable).parent / "fairsteer"), "serve", "--model", model, "--port", str(port)]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    return argv + list(fairsteer_options) + ["--", *engine_options]


def plain_vllm_argv(model: str, port: int, *, engine_options: tuple = (), on_cpu: bool = True) -> list[str]:
    """vLLM's own server with the options `fairsteer serve` would use: the honest reference."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), *engine_defaults(model, on_cpu), *engine_options]


class ServerProcess:
    """A server subprocess in its own session, so stopping it also ends its engine-core child."""

    def __init__(self, argv: list[str], port: int, log_path: str | Path, env: dict[str, str] | None = None):
        self.argv, self.port, self.log_path = argv, port, Path(log_path)
        # vLLM's CPU default pins every engine's thread to core 0 and reserves core 1: servers started
        # side by side (tests, the benchmark's arms, a neighbour's) would all share one core.
        defaults = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        self.env = {**defaults, **os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 240.0) -> "ServerProcess":
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode} before becoming "
                                   f"healthy; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not healthy after {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server (vLLM shuts its engine down), then SIGKILL its process group if needed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group is this server's own session
        except ProcessLookupError:
            pass
        self.proc.wait(30)  # a loaded 2-core machine can take a while to reap the group

    def __enter__(self) -> Self:
        self.start()
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
