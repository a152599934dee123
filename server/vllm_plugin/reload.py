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
`engine_client.collective_rpc("fairsteer_write_slot", args=...)`, which runs in EVERY worker (each
tensor-parallel rank holds all sites' tables: norms are replicated; each pipeline stage holds its own
layers' sites). `fairsteer_slot_table` reports, per worker, the slot names, the sites it steers and a
digest of every slot's rows (`slot_digest`), so the front end can check after each write that every
worker holds exactly what was written (server.admin.AdapterSlots.write, server/engine_tables.py).
"""

import torch

from server.engine_boundary import BASE_ARCH_KEY, FREE_SLOT
from server.vllm_plugin.digest import slot_digest
from server.vllm_plugin.models import local_norm
from server.vllm_plugin.state import STATE

EXTENSION_FQCN = "server.vllm_plugin.reload.SteeringReloadExtension"


class SteeringReloadExtension:
    """Mixed into vLLM's worker class; methods run in the engine process, addressed by name."""

    def _fairsteer_model(self):
        model = self.model_runner.get_model()
        return getattr(model, "runnable", model)  # unwrap a CUDA-graph wrapper, if any

    def fairsteer_slot_table(self) -> dict:
        """This worker's slot names (index order), the sites it steers (its pipeline stage's) and the
        digest of each slot's rows over those sites: the front end checks every worker's table before
        serving and after every write."""
        model = self._fairsteer_model()
        base_arch = getattr(self.vllm_config.model_config.hf_config, BASE_ARCH_KEY)
        names = list(getattr(STATE, "adapter_names", ()))
        norms = [(site, local_norm(model, base_arch, site)) for site in model.fairsteer_sites]
        digests = [slot_digest([(site, norm.fairsteer_a[k], norm.fairsteer_b[k]) for site, norm in norms])
                   for k in range(len(names))]
        return {"rank": getattr(self, "rank", 0), "slots": names, "sites": [site for site, _ in norms],
                "digests": digests, "generation": STATE.generation, "live": STATE.live}

    def fairsteer_write_slot(self, slot: int, name: str, sites: list[str], a: list, b: list,
                             generation: int | None = None) -> str:
        """Put one adapter's (S, D) tables into adapter index `slot` (>= 1) under the versioned `name`.

        `a`, `b` are nested lists (S x D floats): what vLLM's RPC encoding carries faithfully.
        Sites the adapter does not steer get zeros. An empty `name` frees the slot. Returns `name`.
        `generation`: the table generation the writer decided on; refused if another change came since.
        """
        _check_generation(generation)
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)  # (S, D)
        names = list(STATE.adapter_names)
        if not 1 <= slot <= len(names):
            raise ValueError(f"slot {slot} is outside 1..{len(names)}")
        model = self._fairsteer_model()
        base_arch = getattr(self.vllm_config.model_config.hf_config, BASE_ARCH_KEY)
        row = {site: i for i, site in enumerate(sites)}
        for site in model.fairsteer_sites:
            norm = local_norm(model, base_arch, site)
            if site in row and name != FREE_SLOT:
                norm.fairsteer_a[slot - 1].copy_(a[row[site]])
                norm.fairsteer_b[slot - 1].copy_(b[row[site]])
            else:
                norm.fairsteer_a[slot - 1].zero_()
                norm.fairsteer_b[slot - 1].zero_()
        names[slot - 1] = name
        STATE.adapter_names = tuple(names)
        return name


    def fairsteer_commit(self, generation: int, live: dict) -> int:
        """Make `live` ({"default_adapter": NAME | None, "adapters": {NAME: record}}, server/admin.py) the
        served set, compare-and-swap: only if the table is still at `generation`. Returns the new one."""
        _check_generation(generation)
        STATE.live, STATE.generation = live, generation + 1
        return STATE.generation


def _check_generation(generation: int | None) -> None:
    if generation is not None and generation != STATE.generation:
        raise ValueError(f"the adapter table moved to generation {STATE.generation} while a change was made "
                         f"against generation {generation}; retry it")
