"""Adapters written at run time reach a torch.compiled engine (the GPU default is compiled + CUDA graphs).

One compiled vLLM CPU engine (tiny Llama) built with 4 adapter slots and adapters A and B at start-up.
A's tables written at run time into a free slot must steer exactly like A's start-up slot, and B's
tables written over A's slot must steer exactly like B: the compiled code reads the slot rows in place,
nothing was frozen into it. A freed slot is a no-op again.
"""

import pytest
from tiny_models import ENGINE_PROMPTS, greedy, save_tiny_model
from transformers import AutoConfig
from vllm import LLM

from adapters import io
from adapters.spec import ModelIdentity, random_spec
from server.engine_boundary import INTERNAL_ADAPTER_KEY as ADAPTER_KEY
from server.engine_boundary import INTERNAL_STRENGTH_KEY as STRENGTH_KEY
from server.vllm_plugin import offline_engine_kwargs
from server.vllm_plugin.processor import publish_slot_names

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_run_time_slot_writes_reach_the_compiled_model(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    identity = ModelIdentity.from_config(AutoConfig.from_pretrained(model))
    specs = {name: random_spec(identity, name, seed=seed, scale_a=0.5, scale_b=2.0, base_model=str(model))
             for name, seed in (("A", 1), ("B", 2))}
    files = {name: str(io.save(spec, tmp_path / f"{name}.safetensors")) for name, spec in specs.items()}
    llm = LLM(model=str(model), enforce_eager=False, distributed_executor_backend="uni", dtype="float32",
              kv_cache_memory_bytes=64 << 20, max_model_len=512, seed=0, max_num_seqs=4,
              **offline_engine_kwargs(str(model), files, capacity=4))
    try:
        def run(adapter):
            extra = None if adapter is None else {ADAPTER_KEY: adapter, STRENGTH_KEY: 1.0}
            return greedy(llm, [(p, extra, 6) for p in ENGINE_PROMPTS])

        def write(slot, name, spec):
            args = (slot, name, list(spec.sites), spec.a.tolist(), spec.b.tolist())
            assert llm.collective_rpc("fairsteer_write_slot", args=args) == [name]
            publish_slot_names(tuple(slot_table()["slots"]))  # as server.admin.AdapterSlots does

        def slot_table():
            (table,) = llm.collective_rpc("fairsteer_slot_table")
            return table

        assert slot_table()["slots"] == ["A", "B", "", ""]
        assert len(slot_table()["sites"]) == 2 * identity.num_layers + 1, "every site has its rows from the start"
        plain, with_a, with_b = run(None), run("A"), run("B")
        assert with_a != plain and with_b != plain and with_a != with_b

        write(3, "A@2", specs["A"])
        assert run("A@2") == with_a, "a slot written at run time steers like the start-up slot"
        write(1, "B@2", specs["B"])
        assert run("B@2") == with_b, "a slot overwritten at run time takes the new tables"
        write(1, "", specs["B"])
        assert slot_table()["slots"] == ["", "B", "A@2", ""]
        assert run("A@2") == with_a and run("B") == with_b, "other slots are untouched"
    finally:
        llm.llm_engine.engine_core.shutdown()
