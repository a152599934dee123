"""Background processes for the observability tests: started in their own session, always ended by PID."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """`with Process(args, log) as p:` runs args (after `python` unless python=False), logging to `log`;
    on exit SIGTERM to its process group (vLLM's engine core is a child), then SIGKILL after 20 s."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None, python: bool = True):
        self.args = [sys.executable, *args] if python else args
        self.log, self.cwd = log, cwd
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env,
                                         start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __exit__(self, *exc) -> None:
        if not self.running():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group this process leads: it and its children
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def wait_for(predicate, timeout: float, process: Process | None, what: str) -> None:
    """Polls `predicate` (exceptions count as not yet) until true; fails with the process log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001, S110 - e.g. connection refused while starting
            pass
        if process is not None and not process.running():
            pytest.fail(f"{what} exited (status {process.proc.returncode}):\n{process.tail()}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{process.tail()}" if process else ""))
