"""Adapters at run time, engine side: a vLLM worker extension that writes adapter slots between steps.

With `engine_kwargs(..., capacity=C)` the model built by models.py holds, at EVERY site of the
architecture, (C, D) tables with one row per adapter index (index k >= 1 is row k-1; unused rows are
zeros, a no-op). They exist before vLLM compiles the model or captures CUDA graphs, and a load only
writes one row in place (`fairsteer_write_slot`): the tensors keep their addresses, so compiled code and
captured graphs read the new values, and no request sees a half-written table: vLLM runs these calls
from its engine loop between two forward passes.

A slot is identified to requests by a versioned name "NAME@VERSION" in `STATE.adapter_names`
(`engine_boundary.slot_name`). The front
end (server.admin) only writes a slot no in-flight request refers to, so a request admitted under one
version is served by that version to its end, even when the adapter is replaced meanwhile.

Selected with `--worker-extension-cls server.vllm_plugin.reload.SteeringReloadExtension`; called through
`engine_client.collective_rpc("fairsteer_write_slot", args=...)`.
"""

import torch

from adapters.sites import module_path
from server.engine_boundary import BASE_ARCH_KEY, FREE_SLOT
from server.vllm_plugin.state import STATE

EXTENSION_FQCN = "server.vllm_plugin.reload.SteeringReloadExtension"


class SteeringReloadExtension:
    """Mixed into vLLM's worker class; methods run in the engine process, addressed by name."""

    def _fairsteer_model(self):
        model = self.model_runner.get_model()
        return getattr(model, "runnable", model)  # unwrap a CUDA-graph wrapper, if any

    def fairsteer_slot_table(self) -> dict:
        """This worker's slot names (index order) and steered sites: the front end checks that every
        worker holds the table it expects before serving."""
        return {"slots": list(getattr(STATE, "adapter_names", ())),
                "sites": list(self._fairsteer_model().fairsteer_sites)}

    def fairsteer_write_slot(self, slot: int, name: str, sites: list[str], a: list, b: list) -> str:
        """Put one adapter's (S, D) tables into adapter index `slot` (>= 1) under the versioned `name`.

        `a`, `b` are nested lists (S x D floats): what vLLM's RPC encoding carries faithfully.
        Sites the adapter does not steer get zeros. An empty `name` frees the slot. Returns `name`.
        """
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)  # (S, D)
        names = list(STATE.adapter_names)
        if not 1 <= slot <= len(names):
            raise ValueError(f"slot {slot} is outside 1..{len(names)}")
        model = self._fairsteer_model()
        hf_config = self.vllm_config.model_config.hf_config
        base_arch = getattr(hf_config, BASE_ARCH_KEY)
        row = {site: i for i, site in enumerate(sites)}
        for site in model.fairsteer_sites:
            norm = model.get_submodule(module_path(base_arch, site))
            if not hasattr(norm, "fairsteer_a"):
                continue
            if site in row and name != FREE_SLOT:
                norm.fairsteer_a[slot - 1].copy_(a[row[site]])
                norm.fairsteer_b[slot - 1].copy_(b[row[site]])
            else:
                norm.fairsteer_a[slot - 1].zero_()
                norm.fairsteer_b[slot - 1].zero_()
        names[slot - 1] = name
        STATE.adapter_names = tuple(names)
        return name
