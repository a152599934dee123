"""The steered Qwen2, Qwen3 and Gemma3 classes, and torch.compile mode, in a real vLLM CPU engine.

One steered engine per case (tiny random model, random adapter at every site): strength 0 equals the
request without steering, strength 1 changes the output, and a mixed batch equals each request alone.
Compiled mode (no enforce_eager, Llama) shows the custom op keeps per-request values out of the traced graph;
the Qwen3 case forces the fused norm+steer op (FAIRSTEER_FUSED_NORM=1, the CUDA path) on CPU.
Qwen2 shares Qwen3's decoder code in vLLM (Qwen3Model subclasses Qwen2Model) and the same steering mixin.
"""

import pytest
from tiny_models import ENGINE_PROMPTS as PROMPTS
from tiny_models import greedy, save_tiny_model
from transformers import AutoConfig
from vllm import LLM

from adapters import io
from adapters.spec import ModelIdentity, random_spec
from server.engine_boundary import INTERNAL_ADAPTER_KEY as ADAPTER_KEY
from server.engine_boundary import INTERNAL_STRENGTH_KEY as STRENGTH_KEY
from server.vllm_plugin import offline_engine_kwargs

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def random_adapter(model_dir, out_dir) -> str:
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model_dir))
    spec = random_spec(identity, "rand", seed=2, scale_a=0.5, scale_b=2.0, base_model=str(model_dir))
    return str(io.save(spec, out_dir / "rand.safetensors"))


CASES = [("Qwen3ForCausalLM", "eager-fused"), ("Gemma3ForCausalLM", "eager"), ("LlamaForCausalLM", "compiled"),
         ("Qwen2ForCausalLM", "eager")]


@pytest.mark.parametrize("arch, mode", CASES)
def test_steered_architecture_serves_per_request_strengths(arch, mode, tmp_path, monkeypatch):
    model = save_tiny_model(tmp_path / arch, arch)
    monkeypatch.setenv("FAIRSTEER_FUSED_NORM", "1" if mode == "eager-fused" else "0")  # engine inherits it
    llm = LLM(model=str(model), enforce_eager=mode != "compiled", distributed_executor_backend="uni",
              dtype="float32", kv_cache_memory_bytes=64 << 20, max_model_len=512, seed=0, max_num_seqs=4,
              **offline_engine_kwargs(str(model), {"rand": random_adapter(model, tmp_path)}))
    try:
        def rand(strength):
            return {ADAPTER_KEY: "rand", STRENGTH_KEY: strength}

        plain = greedy(llm, [(p, None, 8) for p in PROMPTS])
        assert greedy(llm, [(p, rand(0.0), 8) for p in PROMPTS]) == plain
        assert greedy(llm, [(p, rand(1.0), 8) for p in PROMPTS]) != plain, f"{arch}: strength 1 must steer"
        requests = [(p, rand((0.0, 0.3, 1.0)[i % 3]), 4 + i) for i, p in enumerate(PROMPTS)]
        assert greedy(llm, requests) == [greedy(llm, [r])[0] for r in requests], "mixed batch must equal solo"
    finally:
        llm.llm_engine.engine_core.shutdown()
