"""`fairsteer serve` as a user runs it: start-up refusals, the unsteered default, option pass-through.

Refusals happen before any engine starts (a few seconds each); one real unsteered server checks that
vLLM options after `--` reach vLLM and that a strength without an adapter is refused over HTTP.
"""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_process import ServerProcess, fairsteer_argv, free_port

from cli import main as cli
from server import settings

FAIRSTEER = str(Path(sys.executable).parent / "fairsteer")
ENGINE = ("--kv-cache-memory-bytes", str(64 * 1024**2), "--max-model-len", "512")


def serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `fairsteer` console script, as a user runs it."""
    return subprocess.run([FAIRSTEER, "serve", *args], check=False, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, f"expected exit 2, got {result.returncode}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, "a user error must not print a traceback"
    for word in words:
        assert word in result.stderr, f"{word!r} missing from: {result.stderr[-2000:]}"


def test_corrupt_adapter_file_stops_start_up(tiny_llama, tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00not a safetensors file")
    assert_refused(serve("--model", str(tiny_llama), "--adapter", f"broken={corrupt}"),
                   "adapter 'broken'", "not a readable safetensors file")


def test_adapter_for_another_model_stops_start_up(tiny_llama, wrong_adapter):
    assert_refused(serve("--model", str(tiny_llama), "--adapter", f"wrong={wrong_adapter}"),
                   "adapter 'wrong'", "hidden_size")


@pytest.mark.vllm
def test_plugin_that_would_not_load_stops_start_up(tiny_llama, boost_adapter):
    """With the plugin excluded from vLLM's plugin list the engine would serve unsteered: refuse."""
    result = serve("--model", str(tiny_llama), "--adapter", f"boost={boost_adapter.path}",
                   env={"VLLM_PLUGINS": "someone-else"})
    assert_refused(result, "VLLM_PLUGINS")


@pytest.mark.parametrize(("args", "words"), [
    (["--default-fairness-strength", "3"], ["--default-fairness-strength", "between 0 and"]),
    (["--max-fairness-strength", "nan"], ["--max-fairness-strength"]),
    (["--default-adapter", "nope"], ["--default-adapter 'nope'"]),
    (["--adapter", "no-equals-sign"], ["NAME=FILE"]),
    (["stray"], ["after `--`"]),
    (["--group-lexicon", "/nonexistent/lexicon.json"], ["does not exist", "--group-lexicon"]),
])
def test_bad_options_are_refused_with_the_fix(tiny_llama, boost_adapter, args, words, capsys):
    status = cli.main(["serve", "--model", str(tiny_llama), "--adapter", f"boost={boost_adapter.path}", *args])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_default_model_without_shipped_adapter_serves_unsteered_loudly(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "absent.safetensors"
    monkeypatch.setitem(settings.SHIPPED_ADAPTERS, settings.DEFAULT_MODEL, ("dso", missing))
    assert settings._adapter_table((), settings.DEFAULT_MODEL) == {}
    assert "UNSTEERED" in capsys.readouterr().err
    missing.write_bytes(b"x")
    assert settings._adapter_table((), settings.DEFAULT_MODEL) == {"dso": str(missing)}
    assert settings._adapter_table(("mine=f",), settings.DEFAULT_MODEL) == {"mine": "f"}


@pytest.mark.vllm
def test_unsteered_server_refuses_strength_and_passes_engine_options(tiny_llama, tmp_path):
    port = free_port()
    argv = fairsteer_argv(str(tiny_llama), {}, port, engine_options=(*ENGINE, "--served-model-name", "tiny-plain"))
    with ServerProcess(argv, port, tmp_path / "serve.log") as server:
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["tiny-plain"]
        assert httpx.get(server.url + "/v1/steerings").json()["data"] == []
        body = {"model": "tiny-plain", "prompt": "Hi", "max_tokens": 2}
        refused = httpx.post(server.url + "/v1/completions", json={**body, "fairness_strength": 0.5})
        assert refused.status_code == 400 and "no steering adapter" in refused.json()["error"]["message"]
        served = httpx.post(server.url + "/v1/completions", json=body)
        assert served.status_code == 200 and served.json()["fairsteer"] == {"adapter": None, "version": None,
                                                                             "strength": 0.0}
        assert "UNSTEERED" in server.log_tail(400)


def test_a_cuda_build_without_a_gpu_stops_with_the_fix(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(settings.ServeConfigError, match="no GPU is visible.*--gpus all"):
        settings._has_cuda()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert settings._has_cuda() is False
