"""Background processes for the observability tests: `fairsteer serve` through the tests' launcher
(tests/server_process.py), Prometheus through the same one, ready once its /-/ready answers.

    with PrometheusProcess([prometheus, f"--web.listen-address=127.0.0.1:{port}", ...], port, log) as p:
        p.url   # "http://127.0.0.1:PORT", ready
"""

import time
from typing import ClassVar

import pytest
from server_process import ServerProcess


class PrometheusProcess(ServerProcess):
    HEALTH_PATH: ClassVar[str] = "/-/ready"


def wait_for(predicate, timeout: float, process: ServerProcess | None, what: str) -> None:
    """Polls `predicate` (exceptions count as not yet) until true; fails with the process log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001, S110 - e.g. connection refused while starting
            pass
        if process is not None and process.proc.poll() is not None:
            pytest.fail(f"{what} exited (status {process.proc.returncode}):\n{process.log_tail()}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f":\n{process.log_tail()}" if process else ""))
