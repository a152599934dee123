"""Start-up refuses to serve unsteered: bad adapters, a plugin vLLM would not load, a missing processor."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from vllm import LLM

from adapters.spec import AdapterFormatError
from server.engine_boundary import steered_architecture
from server.vllm_plugin import PROCESSOR_FQCN, offline_engine_kwargs


def test_adapter_for_another_model_is_refused(tiny_llama, wrong_adapter, boost_adapter):
    with pytest.raises(AdapterFormatError, match=r"adapter 'fair'.*hidden_size 64.*has 128"):
        offline_engine_kwargs(str(tiny_llama), {"boost": str(boost_adapter.path), "fair": str(wrong_adapter)})


def test_missing_or_corrupt_adapter_file_is_refused(tiny_llama, tmp_path):
    with pytest.raises(AdapterFormatError, match="no such adapter file"):
        offline_engine_kwargs(str(tiny_llama), {"fair": str(tmp_path / "absent.safetensors")})
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(AdapterFormatError, match="not a readable safetensors file"):
        offline_engine_kwargs(str(tiny_llama), {"fair": str(corrupt)})


def test_unusable_adapter_name_is_refused(tiny_llama, boost_adapter):
    with pytest.raises(AdapterFormatError, match="adapter name 'a b' is not usable"):
        offline_engine_kwargs(str(tiny_llama), {"a b": str(boost_adapter.path)})


def test_engine_kwargs_select_the_steered_architecture(tiny_llama, adapter_table):
    kwargs = offline_engine_kwargs(str(tiny_llama), adapter_table)
    assert kwargs["logits_processors"] == [PROCESSOR_FQCN]
    assert kwargs["hf_overrides"]["architectures"] == [steered_architecture("LlamaForCausalLM")]
    assert [name for name, _, _ in json.loads(kwargs["hf_overrides"]["fairsteer_adapters"])] == ["boost", "mix"]
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


_WITHOUT_PLUGIN = textwrap.dedent("""
    import json, sys
    from vllm.engine.arg_utils import EngineArgs
    from server.vllm_plugin import PluginError, offline_engine_kwargs
    model, adapter = sys.argv[1], sys.argv[2]
    result = {}
    try:
        offline_engine_kwargs(model, {"boost": adapter})
    except PluginError as exc:
        result["engine_kwargs"] = str(exc)
    try:  # vLLM itself, asked for the steered architecture while the plugin is not loaded
        EngineArgs(model=model, hf_overrides={"architectures": ["FairsteerLlamaForCausalLM"]},
                   max_model_len=512).create_engine_config()
    except Exception as exc:
        result["vllm"] = f"{type(exc).__name__}: {exc}"
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.vllm
def test_plugin_that_vllm_would_not_load_stops_start_up(tiny_llama, boost_adapter):
    env = {**os.environ, "VLLM_PLUGINS": "some_other_plugin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_PLUGIN, str(tiny_llama), str(boost_adapter.path)],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the check script crashed:\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert "excludes the fairsteer plugin" in result.get("engine_kwargs", ""), result
    assert "FairsteerLlamaForCausalLM" in result.get("vllm", ""), (
        f"vLLM must refuse the steered architecture when the plugin is not loaded, not serve it: {result}")


@pytest.mark.vllm
def test_steered_model_without_the_state_processor_stops_start_up(tiny_llama, adapter_table, monkeypatch):
    kwargs = offline_engine_kwargs(str(tiny_llama), adapter_table)
    del kwargs["logits_processors"]
    # Engine core in this process, so its start-up error reaches the test directly (and faster).
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(RuntimeError, match="every request would be served unsteered"):
        LLM(model=str(tiny_llama), enforce_eager=True, distributed_executor_backend="uni", dtype="float32",
            kv_cache_memory_bytes=64 << 20, max_model_len=512, **kwargs)
