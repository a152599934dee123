"""Start `fairsteer serve` (or any server command) as a subprocess on 127.0.0.1, wait until it is healthy,
stop it by its PID: the one launcher of `fairsteer eval --task chat`, the tests and the bench/ scripts.

    port = free_port()
    with ServerProcess(fairsteer_argv(model, {"boost": path}, port), port, log) as server:
        server.url   # "http://127.0.0.1:PORT", healthy

The server runs in its own session, so stopping it (SIGTERM, then SIGKILL to the whole process group)
also ends vLLM's engine-core and worker children. Imports no vLLM.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import ClassVar, Self


class ServerStartError(RuntimeError):
    """The server exited or was not healthy in time; `reason` says which, the message adds its log's tail."""

    def __init__(self, reason: str, log_tail: str):
        super().__init__(f"{reason}; log tail:\n{log_tail}")
        self.reason = reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fairsteer_command() -> list[str]:
    """The installed console script beside this interpreter, as a user runs it; `python -m cli.main` where
    none is installed there (a checkout run without `pip install`)."""
    script = Path(sys.executable).parent / "fairsteer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def fairsteer_argv(model: str, adapters: dict[str, str], port: int, *, fairsteer_options: tuple = (),
                   engine_options: tuple = ()) -> list[str]:
    """`fairsteer serve` on 127.0.0.1:port with `adapters` (serving name -> file)."""
    argv = [*fairsteer_command(), "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    for name, path in adapters.items():
        argv += ["--adapter", f"{name}={path}"]
    return argv + list(fairsteer_options) + ["--", *engine_options]


class ServerProcess:
    """A server subprocess in its own session, so stopping it also ends its engine-core child.

    Args:
        env: variables set over this process's environment (ENV_DEFAULTS lie under both).
        ready_timeout: seconds `wait_ready` (and `with`) waits for /health; a real model on a loaded
            2-core machine needs several minutes.
        stop_grace: seconds between SIGTERM (vLLM shuts its engine down) and SIGKILL of the group.
    """

    # vLLM's CPU default pins every engine's thread to core 0 and reserves core 1: servers started side
    # by side (tests, the benchmark's arms, a neighbour's) would all share one core, and a lone server
    # could not use the second.
    ENV_DEFAULTS: ClassVar[dict[str, str]] = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    # What answers 200 once the server serves (another server, e.g. Prometheus, names its own).
    HEALTH_PATH: ClassVar[str] = "/health"

    def __init__(self, argv: list[str], port: int, log_path: str | Path, env: dict[str, str] | None = None, *,
                 ready_timeout: float = 240.0, stop_grace: float = 20.0):
        self.argv, self.port, self.log_path = argv, port, Path(log_path)
        self.env = {**self.ENV_DEFAULTS, **os.environ, **(env or {})}
        self.ready_timeout, self.stop_grace = ready_timeout, stop_grace
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        return self

    def wait_ready(self, timeout: float | None = None) -> "ServerProcess":
        """Poll HEALTH_PATH until it answers 200; ServerStartError if the server exits or `timeout` passes."""
        assert self.proc is not None, "start() first"
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"server exited with status {self.proc.returncode} before becoming "
                                       "healthy", self.log_tail())
            try:
                with urllib.request.urlopen(self.url + self.HEALTH_PATH, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise ServerStartError(f"server not healthy after {timeout:.0f} s", self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the server (vLLM shuts its engine down), then SIGKILL its process group if needed. An
        interrupt during the grace wait (Ctrl-C, or SIGTERM turned into one by cli/main.py) cuts the grace
        short, never the kill."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(self.stop_grace if grace is None else grace)
                except subprocess.TimeoutExpired:
                    pass
        finally:
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
