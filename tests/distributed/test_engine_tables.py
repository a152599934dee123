"""The front end's check that every engine worker holds one adapter table (no vLLM engine: fake workers).

Each fake worker keeps (K, D) rows at its own sites, as a tensor-parallel rank (all sites) or a pipeline
stage (its layers' sites) does, and answers `fairsteer_slot_table` / `fairsteer_write_slot` like
server/vllm_plugin/reload.py. A worker that drops or garbles a write must make the write an error, and
the slot must end up free and unnamed: never a table that steers in one worker and not in another.
"""

import asyncio

import pytest
import torch

from adapters.sites import all_sites
from adapters.spec import ModelIdentity, random_spec
from server.admin import AdapterSlots, AdminError
from server.engine_boundary import FREE_SLOT
from server.engine_tables import expected_digest, slot_problems, table_problems
from server.errors import ServeConfigError
from server.registry import SteeringRegistry
from server.vllm_plugin.digest import slot_digest

IDENTITY = ModelIdentity("LlamaForCausalLM", hidden_size=16, num_layers=4, fingerprint="f" * 12)
SITES = all_sites(IDENTITY.num_layers)
CAPACITY = 3


class FakeWorker:
    def __init__(self, rank: int, sites: tuple[str, ...], fault: str | None = None):
        self.rank, self.sites, self.fault = rank, sites, fault
        self.names = [FREE_SLOT] * CAPACITY
        self.a = {s: torch.zeros(CAPACITY, IDENTITY.hidden_size) for s in sites}
        self.b = {s: torch.zeros(CAPACITY, IDENTITY.hidden_size) for s in sites}

    def fairsteer_slot_table(self) -> dict:
        digests = [slot_digest([(s, self.a[s][k], self.b[s][k]) for s in self.sites]) for k in range(CAPACITY)]
        return {"rank": self.rank, "slots": list(self.names), "sites": list(self.sites), "digests": digests}

    def fairsteer_write_slot(self, slot, name, sites, a, b) -> str:
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
