"""Adapters at run time, engine side: a vLLM worker extension that writes adapter slots between steps.

The model built by models.py holds, at each steered norm, (K, D) tables with one row per adapter index
(index k >= 1 is row k-1). For run-time loading `prepare` turns EVERY site of the architecture into a
steered norm with `capacity` rows (zeros: a no-op), once, before serving; afterwards a load only writes
one row in place (`write_slot`), so tensors keep their addresses and no request sees a half-written table:
vLLM runs these calls from its engine loop between two forward passes.

A slot is identified to requests by a versioned name "NAME@VERSION" in `STATE.adapter_names`. The front
end (server.admin) only writes a slot no in-flight request refers to, so a request admitted under one
version is served by that version to its end, even when the adapter is replaced meanwhile.

Selected with `--worker-extension-cls server.vllm_plugin.reload.SteeringReloadExtension`; called through
`engine_client.collective_rpc("fairsteer_write_slot", args=...)`. Eager mode only: compiled graphs and
CUDA graphs may hold the old tables (server.admin refuses run-time loading otherwise).
"""

import torch

from adapters.sites import all_sites, module_path
from server.vllm_plugin.models import BASE_ARCH_KEY, _identity, _steer_module
from server.vllm_plugin.state import STATE

EXTENSION_FQCN = "server.vllm_plugin.reload.SteeringReloadExtension"
FREE = ""  # the name of an empty slot: no request can ask for it


class SteeringReloadExtension:
    """Mixed into vLLM's worker class; methods run in the engine process, addressed by name."""

    def _fairsteer_model(self):
        model = self.model_runner.get_model()
        return getattr(model, "runnable", model)  # unwrap a CUDA-graph wrapper, if any

    def fairsteer_prepare(self, capacity: int, names: list[str]) -> list[str]:
        """Give every site `capacity` adapter rows; existing rows keep their values, new ones are zeros.

        `names` renames the adapters loaded at start-up (same order) to their versioned names.
        Returns the steered sites. Idempotent for the same capacity.
        """
        model = self._fairsteer_model()
        hf_config = self.vllm_config.model_config.hf_config
        base_arch = getattr(hf_config, BASE_ARCH_KEY)
        identity = _identity(hf_config)
        old = tuple(getattr(STATE, "adapter_names", ()))
        if len(names) != len(old):
            raise ValueError(f"{len(names)} names given for {len(old)} loaded adapters")
        if capacity < len(old):
            raise ValueError(f"capacity {capacity} is below the {len(old)} adapters already loaded")
        device = next(model.parameters()).device
        for site in all_sites(identity.num_layers):
            norm = model.get_submodule(module_path(base_arch, site))
            if not hasattr(norm, "variance_epsilon"):
                continue  # another pipeline stage's placeholder
            a = torch.zeros(capacity, identity.hidden_size, dtype=torch.float32, device=device)  # (C, D)
            b = torch.zeros_like(a)
            if hasattr(norm, "fairsteer_a"):  # already steered: keep its rows, widen its tables
                k = min(capacity, norm.fairsteer_a.shape[0])
                a[:k], b[:k] = norm.fairsteer_a[:k], norm.fairsteer_b[:k]
                norm.fairsteer_a, norm.fairsteer_b = a, b
            else:
                _steer_module(norm, a, b)
        STATE.adapter_names = tuple(names) + (FREE,) * (capacity - len(names))
        model.fairsteer_sites = all_sites(identity.num_layers)
        return list(model.fairsteer_sites)

    def fairsteer_write_slot(self, slot: int, name: str, sites: list[str], a: list, b: list) -> str:
        """Put one adapter's (S, D) tables into adapter index `slot` (>= 1) under the versioned `name`.

        `a`, `b` are nested lists (S x D floats): what vLLM's RPC encoding carries faithfully.
        Sites the adapter does not steer get zeros. An empty `name` frees the slot. Returns `name`.
        """
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)  # (S, D)
        names = list(STATE.adapter_names)
        if not 1 <= slot <= len(names):
            raise ValueError(f"slot {slot} is outside 1..{len(names)}; call fairsteer_prepare first")
        model = self._fairsteer_model()
        hf_config = self.vllm_config.model_config.hf_config
        base_arch = getattr(hf_config, BASE_ARCH_KEY)
        row = {site: i for i, site in enumerate(sites)}
        for site in model.fairsteer_sites:
            norm = model.get_submodule(module_path(base_arch, site))
            if not hasattr(norm, "fairsteer_a"):
                continue
            if site in row and name != FREE:
                norm.fairsteer_a[slot - 1].copy_(a[row[site]])
                norm.fairsteer_b[slot - 1].copy_(b[row[site]])
            else:
                norm.fairsteer_a[slot - 1].zero_()
                norm.fairsteer_b[slot - 1].zero_()
        names[slot - 1] = name
        STATE.adapter_names = tuple(names)
        return name

    def fairsteer_slot_names(self) -> list[str]:
        return list(getattr(STATE, "adapter_names", ()))
