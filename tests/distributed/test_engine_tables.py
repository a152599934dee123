"""The front end's check that every engine worker holds one adapter table (no vLLM engine: fake workers).

Each fake worker keeps (K, D) rows at its own sites, as a tensor-parallel rank (all sites) or a pipeline
stage (its layers' sites) does, and answers `fairsteer_slot_table` / `fairsteer_write_slot` like
server/vllm_plugin/reload.py. A worker that drops or garbles a write must make the write an error, and
the slot must end up free and unnamed: never a table that steers in one worker and not in another.
Two front ends sharing one ledger (server/adapter_ledger.py) stand for two API processes.
"""

import asyncio
from dataclasses import replace

import pytest
import torch

from adapters import io
from adapters.sites import all_sites
from adapters.spec import ModelIdentity, random_spec
from server.adapter_ledger import AdapterLedger
from server.admin import AdapterSlots, AdminError
from server.engine_boundary import FREE_SLOT, slot_name
from server.engine_tables import expected_digest, slot_problems, table_problems
from server.errors import ServeConfigError
from server.registry import LoadedAdapter, SteeringRegistry
from server.vllm_plugin.digest import slot_digest

IDENTITY = ModelIdentity("LlamaForCausalLM", hidden_size=16, num_layers=4, fingerprint="f" * 12)
SITES = all_sites(IDENTITY.num_layers)
CAPACITY = 3


class FakeWorker:
    def __init__(self, rank: int, sites: tuple[str, ...], fault: str | None = None):
        self.rank, self.sites, self.fault = rank, sites, fault
        self.names = [FREE_SLOT] * CAPACITY
        self.generation, self.live = 0, None
        self.a = {s: torch.zeros(CAPACITY, IDENTITY.hidden_size) for s in sites}
        self.b = {s: torch.zeros(CAPACITY, IDENTITY.hidden_size) for s in sites}

    def fairsteer_slot_table(self) -> dict:
        digests = [slot_digest([(s, self.a[s][k], self.b[s][k]) for s in self.sites]) for k in range(CAPACITY)]
        return {"rank": self.rank, "slots": list(self.names), "sites": list(self.sites), "digests": digests,
                "generation": self.generation, "live": self.live}

    def fairsteer_commit(self, generation, live) -> int:  # as server/vllm_plugin/reload.py
        if generation != self.generation:
            raise ValueError(f"moved to generation {self.generation}")
        self.generation, self.live = generation + 1, live
        return self.generation

    def fairsteer_write_slot(self, slot, name, sites, a, b, generation=None) -> str:
        if generation is not None and generation != self.generation:
            raise ValueError(f"moved to generation {self.generation}")
        if self.fault == "drops writes":
            return name
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        row = {s: i for i, s in enumerate(sites)}
        for s in self.sites:
            self.a[s][slot - 1] = a[row[s]] if s in row and name else 0
            self.b[s][slot - 1] = b[row[s]] if s in row and name else 0
        if self.fault == "garbles rows":
            self.a[self.sites[0]][slot - 1, 0] += 1e-6
        self.names[slot - 1] = name
        return name


class FakeEngine:
    def __init__(self, workers):
        self.workers = workers

    async def collective_rpc(self, method, args=()):
        return [getattr(w, method)(*args) for w in self.workers]


def slots_for(engine) -> AdapterSlots:
    registry = SteeringRegistry(model="m", adapters={}, default_adapter=None, default_strength=0.0,
                                max_strength=2.0)
    return AdapterSlots(engine, registry, CAPACITY)


def spec(seed: int):
    return random_spec(IDENTITY, f"s{seed}", seed, scale_a=0.5, scale_b=1.0)


def tensor_parallel(fault=None):
    return FakeEngine([FakeWorker(0, SITES), FakeWorker(1, SITES, fault)])


def pipeline_parallel(fault=None):
    half = len(SITES) // 2
    return FakeEngine([FakeWorker(0, SITES[:half]), FakeWorker(1, SITES[half:], fault)])


@pytest.mark.parametrize("make", [tensor_parallel, pipeline_parallel])
def test_a_write_that_every_worker_holds_is_accepted(make):
    engine = make()
    slots = slots_for(engine)
    asyncio.run(slots.check_engine(SITES))
    asyncio.run(slots.write(2, "A@1", spec(1)))
    assert slots.names == ["", "A@1", ""]
    assert all(w.names == slots.names for w in engine.workers)
    tables = asyncio.run(slots.tables())
    assert table_problems(tables, slots.names, SITES) == [] and slot_problems(tables, 2, spec(1), 16) == []


@pytest.mark.parametrize("make", [tensor_parallel, pipeline_parallel])
@pytest.mark.parametrize("fault", ["drops writes", "garbles rows"])
def test_a_write_one_worker_did_not_take_is_an_error_and_the_slot_is_left_free(make, fault):
    engine = make(fault)
    slots = slots_for(engine)
    with pytest.raises(AdminError) as err:
        asyncio.run(slots.write(1, "A@1", spec(1)))
    assert err.value.status == 500 and "worker 1" in err.value.message, err.value.message
    assert slots.names == [FREE_SLOT] * CAPACITY, "a half-written slot must stay unnamed in the front end"
    assert engine.workers[0].names == [FREE_SLOT] * CAPACITY, "the healthy worker must be cleared again"
    if fault == "drops writes":
        assert "was cleared in every worker" in err.value.message
    else:  # the faulty worker garbles the clear too: said plainly, and the slot stays unnamed
        assert "could not be cleared" in err.value.message


def test_start_up_refuses_workers_that_disagree_or_miss_sites():
    engine = tensor_parallel()
    engine.workers[1].names[0] = "A@1"
    with pytest.raises(ServeConfigError, match="worker 1 holds adapter slots"):
        asyncio.run(slots_for(engine).check_engine(SITES))
    engine = tensor_parallel()
    engine.workers[1].a[SITES[3]][2, 5] = 1.0
    with pytest.raises(ServeConfigError, match="hold different rows in slot 3"):
        asyncio.run(slots_for(engine).check_engine(SITES))
    engine = pipeline_parallel()
    engine.workers.pop()
    with pytest.raises(ServeConfigError, match="missing"):
        asyncio.run(slots_for(engine).check_engine(SITES))


def test_the_expected_digest_is_the_workers_digest_of_the_same_rows():
    s = spec(3)
    rows = [(site, s.a[i], s.b[i]) for i, site in enumerate(s.sites)]
    assert expected_digest(s, list(s.sites), 16) == slot_digest(rows)
    zeros = torch.zeros(16)
    assert expected_digest(None, ["final_norm"], 16) == slot_digest([("final_norm", zeros, zeros)])


def loaded(name: str, seed: int, folder) -> tuple[LoadedAdapter, object]:
    s = spec(seed)
    path = io.save(s, folder / f"{name}-{seed}.safetensors")
    return LoadedAdapter(name, str(path), s.version, s.sites, s.num_parameters, s.meta), s


def test_two_api_processes_pin_and_change_against_the_engines_table(tmp_path):
    """Two AdapterSlots sharing one ledger and one engine: what `--api-server-count 2` runs in two processes."""
    engine, ledger = tensor_parallel(), AdapterLedger(CAPACITY)
    first, second = (AdapterSlots(engine, slots_for(engine).holder.fairsteer_registry, CAPACITY, ledger)
                     for _ in range(2))

    async def change(slots, name, seed):  # AdapterAdmin.load, without HTTP
        async with slots.changing():
            adapter, s = loaded(name, seed, tmp_path)
            registry = slots.holder.fairsteer_registry
            live = {a.slot for a in registry.adapters.values()}
            await slots.write(slots.free_slot(live), adapter.slot, s)
            adapters = {**registry.adapters, name: adapter}
            await slots.commit(replace(registry, adapters=adapters, default_adapter=registry.default_adapter or name))
            return adapter.slot

    v1 = asyncio.run(change(first, "fair", 1))
    assert not second.admit(None), "a process with an older copy of the table must not admit"
    asyncio.run(second.sync())
    assert second.names == first.names and second.holder.fairsteer_registry.policy == first.holder.fairsteer_registry.policy
    assert second.admit(v1)  # a request pinned to fair v1 through the second process
    v2 = asyncio.run(change(first, "fair", 2))  # replace through the first
    assert engine.workers[0].names == [v1, v2, FREE_SLOT], "the old version drains in its slot"
    asyncio.run(second.sync())
    assert second.holder.fairsteer_registry.adapters["fair"].version == spec(2).version
    asyncio.run(change(first, "other", 3))
    with pytest.raises(AdminError, match="still serving"):  # slot 1 is counted by the second process
        asyncio.run(change(first, "third", 4))
    second.release(v1)
    asyncio.run(change(first, "third", 4))
    assert engine.workers[1].names[0] == slot_name("third", spec(4).version), "freed once nothing was in flight"
    stale = AdapterSlots(engine, slots_for(engine).holder.fairsteer_registry, CAPACITY, AdapterLedger(CAPACITY))
    with pytest.raises(ValueError, match="moved to generation"):  # the engine refuses a stale writer
        asyncio.run(stale.write(1, "x@1", spec(5)))
