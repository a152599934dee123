"""A stop signal to a `fairsteer` command that owns a server stops the server too (cli/main.py).

`fairsteer eval --task chat` runs in a subprocess, as a user or a job scheduler runs it, on the tiny model;
once its server (a child in its own session, server/launcher.py) is healthy and serving the eval's chats,
the eval gets SIGTERM. It must say so, exit, and leave no process of the server's group behind.
"""

import os
import re
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest

from server.launcher import fairsteer_command

pytestmark = pytest.mark.vllm

# Start-up of the tiny model's server on a loaded 2-core machine, and the eval's stop of it: SIGTERM, the
# server's drain of the aborted chats, the kill of its group.
READY_S, EXIT_S = 240, 60


def _wait(predicate, timeout: float, what: str, log, running: subprocess.Popen | None = None):
    """`predicate()`'s first true value, polled; fails with `log()` on timeout or if `running` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        assert running is None or running.poll() is None, \
            f"the eval exited ({running.returncode}) before {what}:\n{log()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{log()}")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> list[psutil.Process]:
    """The processes of group `pgid` that still run (zombies awaiting their reaper do not)."""
    alive = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def test_sigterm_to_chat_eval_stops_its_server(tiny_llama, mix_adapter, tmp_path):
    out, err = tmp_path / "eval.out", tmp_path / "eval.err"
    argv = [*fairsteer_command(), "eval", "--task", "chat", "--model", str(tiny_llama), "--adapter",
            str(mix_adapter.path), "--strengths", "0,1", "--out", str(tmp_path / "eval")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    server_log = tmp_path / "eval" / "chat-server.log"

    def log() -> str:
        server = server_log.read_text(errors="replace")[-3000:] if server_log.exists() else ""
        return f"eval stderr:\n{err.read_text()[-3000:]}\nserver log:\n{server}"

    with open(out, "w") as stdout, open(err, "w") as stderr:
        eval_proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, start_new_session=True)
    server_pid = None
    try:
        server = _wait(lambda: next(iter(psutil.Process(eval_proc.pid).children()), None), 60,
                       "the eval's server process", log, eval_proc)
        server_pid = server.pid
        assert os.getpgid(server_pid) == server_pid, "the server leads its own process group"
        port = int(re.search(r"--port (\d+)", " ".join(server.cmdline())).group(1))
        _wait(lambda: _healthy(port), READY_S, "the server's /health", log, eval_proc)
        _wait(lambda: "POST /v1/chat/completions" in server_log.read_text(errors="replace"), 60,
              "the eval's first chat", log, eval_proc)

        eval_proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            status = eval_proc.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the eval did not exit within {EXIT_S} s of SIGTERM:\n{log()}") from None
        print(f"eval exited {time.monotonic() - sent:.1f} s after SIGTERM")
        assert status == 128 + signal.SIGTERM, f"exit status {status}:\n{log()}"
        assert "fairsteer eval: stopped by SIGTERM" in err.read_text(), log()
        assert "Traceback" not in err.read_text(), log()
        _wait(lambda: not _group_alive(server_pid), 10, "the server's process group to be gone",
              lambda: f"still running: {_group_alive(server_pid)}\n{log()}")
    finally:
        for pgid in (eval_proc.pid, server_pid):
            if pgid is not None and _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        eval_proc.wait(30)
