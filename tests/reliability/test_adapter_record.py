"""Run-time adapter changes survive a restart: the record (server/adapter_record.py), alone and for real.

The real test starts `fairsteer serve` with --adapter-dir on a private copy of the adapters, makes admin
changes, kills the server with SIGKILL right after one (a crash: no drain, no clean-up), restarts it with
the same command line and finds exactly the committed set; then a changed and a vanished file stop
start-up naming them.
"""

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from reliability.helpers import ADMIN_KEY, API_KEY, ENGINE, api_headers
from server_process import ServerProcess, fairsteer_argv, free_port

from adapters import io
from server.adapter_record import AdapterRecord, check_versions
from server.errors import ServeConfigError


@dataclass(frozen=True)
class Loaded:  # what the record reads of a server.registry.LoadedAdapter
    path: str
    version: str


def test_a_saved_record_restores_under_the_same_command_line(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "b.safetensors").write_bytes(b"b")
    record = AdapterRecord(tmp_path / "record.json", {"dso": "a.safetensors"})
    assert record.restore() == ({"dso": "a.safetensors"}, {}, None), "no record yet: the command line"
    adapters = {"dso": Loaded(str(tmp_path / "b.safetensors"), "v2"), "x": Loaded(str(tmp_path / "a.safetensors"), "v1")}
    record.save(adapters, "dso")
    table, versions, default = record.restore()
    assert table == {"dso": str(tmp_path / "b.safetensors"), "x": str(tmp_path / "a.safetensors")}
    assert versions == {"dso": "v2", "x": "v1"} and default == "dso"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fairsteer-record-")], "no temporary left"
    changed = AdapterRecord(tmp_path / "record.json", {"dso": "other.safetensors"})
    assert changed.restore() == ({"dso": "other.safetensors"}, {}, None), "a new command line wins"


def test_a_failed_save_keeps_the_previous_record(tmp_path, monkeypatch):
    record = AdapterRecord(tmp_path / "record.json", {})
    record.save({"a": Loaded("/x/a.safetensors", "v1")}, "a")
    before = record.path.read_text()

    def refuse(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        record.save({"a": Loaded("/x/a.safetensors", "v2")}, "a")
    assert record.path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_vanished_changed_or_unreadable_record_stops_start_up(tmp_path):
    record = AdapterRecord(tmp_path / "record.json", {})
    record.save({"a": Loaded(str(tmp_path / "gone.safetensors"), "v1")}, "a")
    with pytest.raises(ServeConfigError, match="gone.safetensors.*Restore the file, or delete"):
        record.restore()
    with pytest.raises(ServeConfigError, match="was version v1.*now holds version v9"):
        check_versions(record, {"a": "v1"}, {"a": Loaded("f", "v9")})
    record.path.write_text('{"format": "something else"}')
    with pytest.raises(ServeConfigError, match="not a fairsteer adapter record"):
        record.restore()


def _admin(server, method, name, **body):
    return httpx.request(method, f"{server.url}/v1/admin/adapters/{name}", headers=api_headers(ADMIN_KEY),
                         json=body or None, timeout=60)


def _served(server) -> dict[str, str]:
    data = httpx.get(server.url + "/v1/steerings", headers=api_headers(API_KEY), timeout=30).json()
    return {a["id"]: a["version"] for a in data["data"]}


@pytest.mark.vllm
def test_a_restart_mid_way_through_admin_changes_serves_exactly_the_committed_set(rel_model, adapter_dir, tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    for name in ("A", "B"):
        shutil.copy(adapter_dir / f"{name}.safetensors", folder / f"{name}.safetensors")
    version = {name: io.load(folder / f"{name}.safetensors").version for name in ("A", "B")}
    port = free_port()
    argv = fairsteer_argv(str(rel_model), {"main": str(folder / "A.safetensors")}, port,
                          fairsteer_options=("--adapter-dir", str(folder)), engine_options=ENGINE)
    env = {"FAIRSTEER_API_KEY": API_KEY, "FAIRSTEER_ADMIN_KEY": ADMIN_KEY}

    def start(log: str) -> ServerProcess:
        return ServerProcess(argv, port, tmp_path / log, env=env).start()

    server = start("first.log").wait_ready()
    try:
        assert _admin(server, "PUT", "extra", file="B.safetensors").status_code == 200
        assert _admin(server, "PUT", "gone-soon", file="A.safetensors").status_code == 200
        assert _admin(server, "DELETE", "gone-soon").status_code == 200
        assert _admin(server, "PUT", "main", file="B.safetensors").status_code == 200  # replace the default
        committed = _served(server)
        assert committed == {"main": version["B"], "extra": version["B"]}
        os.killpg(server.proc.pid, signal.SIGKILL)  # a crash right after the last committed change
        server.proc.wait(10)
    finally:
        server.stop()

    server = start("second.log").wait_ready()
    try:
        assert _served(server) == committed, "the restarted server serves exactly the committed set"
        body = {"model": str(rel_model), "prompt": "The doctor said", "max_tokens": 8, "temperature": 0,
                "fairness_strength": 1.0}
        outputs = {name: httpx.post(server.url + "/v1/completions", json={**body, "steering": name},
                                    headers=api_headers(API_KEY), timeout=60).json()
                   for name in ("main", "extra")}
        assert outputs["main"]["fairsteer"]["version"] == version["B"]
        assert outputs["main"]["choices"][0]["text"] == outputs["extra"]["choices"][0]["text"]
    finally:
        server.stop()

    shutil.copy(folder / "A.safetensors", folder / "B.safetensors")  # the recorded file changes
    refused = start("changed.log")
    assert refused.proc.wait(240) == 2
    assert f"was version {version['B']}" in refused.log_tail(20)
    (folder / "B.safetensors").unlink()  # and then vanishes
    refused = start("vanished.log")
    assert refused.proc.wait(240) == 2
    assert "has vanished" in refused.log_tail(20) and "Traceback" not in Path(tmp_path / "vanished.log").read_text()
