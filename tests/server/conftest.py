"""Shared fixtures for server tests: a tiny random Llama folder and adapters constructed for it.

Session-scoped, built once per test run in a temporary directory (no download):

    tiny_llama        Path of a 2-layer, 128-wide random Llama (config, weights, tokenizer, chat template)
    boost_adapter     ConstructedAdapter "boost": final_norm b = c · ŵ_t, so strength ω raises the logit
                      of `target_token` by about ω·10 and P(target) grows monotonically with ω
    mix_adapter       ConstructedAdapter "mix": seeded random a, b at every site (all layers + final_norm),
                      so every site kind is exercised; outputs change visibly at strength 1
    wrong_adapter     Path of a valid adapter trained for a different model (hidden 64): must be refused
    adapter_table     {"boost": path, "mix": path}, the name→file table `engine_kwargs` takes
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_model, tiny_config
from transformers import AutoConfig

from adapters import io
from adapters.sites import all_sites
from adapters.spec import AdapterMeta, ModelIdentity, SteeringSpec

# How far strength 1 raises the boosted token's logit (logits of the random model span about ±1).
BOOST_LOGIT = 10.0


@dataclass(frozen=True)
class ConstructedAdapter:
    name: str
    path: Path
    target_token: int | None = None  # the token whose logit the adapter raises, where there is one


def constructed_spec(name: str, identity: ModelIdentity, base_model: str, sites: tuple[str, ...],
                     a: torch.Tensor, b: torch.Tensor) -> SteeringSpec:
    meta = AdapterMeta(name=name, method="constructed", base_model=base_model, identity=identity,
                       training={"note": "constructed for tests"})
    return SteeringSpec(sites, a.float().contiguous(), b.float().contiguous(), meta)


def boost_direction(lm_head: torch.Tensor) -> tuple[int, torch.Tensor]:
    """The token t whose own unit direction ŵ_t raises its logit most above every other token's.

    With b = c · ŵ_t at the final norm, logit_j moves by ω · c · (w_j · ŵ_t); log P(t) grows with ω
    whenever w_t · ŵ_t exceeds every other w_j · ŵ_t, which this choice maximises (special ids skipped).
    """
    w = lm_head.float()                                   # (V, D)
    unit = w / w.norm(dim=1, keepdim=True)                # (V, D)
    gains = w @ unit.T                                    # gains[j, t] = w_j · ŵ_t
    own = gains.diagonal().clone()
    gains.fill_diagonal_(-float("inf"))
    margin = own - gains.max(dim=0).values
    margin[:3] = -float("inf")                            # never the pad/bos/eos ids
    target = int(margin.argmax())
    assert margin[target] > 0, "no token can be boosted monotonically; change the tiny model's seed"
    return target, unit[target] * (BOOST_LOGIT / float(own[target]))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "LlamaForCausalLM", seed=0)


@pytest.fixture(scope="session")
def tiny_identity(tiny_llama) -> ModelIdentity:
    return ModelIdentity.from_config(AutoConfig.from_pretrained(tiny_llama))


@pytest.fixture(scope="session")
def boost_adapter(tiny_llama, tiny_identity, tmp_path_factory) -> ConstructedAdapter:
    lm_head = load_file(str(tiny_llama / "model.safetensors"))["lm_head.weight"]
    target, b = boost_direction(lm_head)
    spec = constructed_spec("boost", tiny_identity, str(tiny_llama), ("final_norm",),
                            torch.zeros(1, b.numel()), b.unsqueeze(0))
    path = io.save(spec, tmp_path_factory.mktemp("adapters") / "boost.safetensors")
    return ConstructedAdapter("boost", path, target)


@pytest.fixture(scope="session")
def mix_adapter(tiny_llama, tiny_identity, tmp_path_factory) -> ConstructedAdapter:
    sites = all_sites(tiny_identity.num_layers)
    gen = torch.Generator().manual_seed(1)
    shape = (len(sites), tiny_identity.hidden_size)
    a = 0.5 * torch.randn(shape, generator=gen)
    b = 2.0 * torch.randn(shape, generator=gen)
    spec = constructed_spec("mix", tiny_identity, str(tiny_llama), sites, a, b)
    path = io.save(spec, tmp_path_factory.mktemp("adapters") / "mix.safetensors")
    return ConstructedAdapter("mix", path)


@pytest.fixture(scope="session")
def wrong_adapter(tmp_path_factory) -> Path:
    """A valid adapter file, but for a 64-wide Llama: loading it for `tiny_llama` must fail."""
    identity = ModelIdentity.from_config(tiny_config("LlamaForCausalLM", hidden=64))
    a, b = torch.zeros(1, 64), torch.ones(1, 64)
    spec = constructed_spec("wrong", identity, "tiny-64", ("final_norm",), a, b)
    return io.save(spec, tmp_path_factory.mktemp("adapters") / "wrong.safetensors")


@pytest.fixture(scope="session")
def adapter_table(boost_adapter, mix_adapter) -> dict[str, str]:
    return {boost_adapter.name: str(boost_adapter.path), mix_adapter.name: str(mix_adapter.path)}
