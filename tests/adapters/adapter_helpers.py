"""Helpers for the adapter tests: tiny random models (hidden 64, 2 layers) and random adapters."""

import torch

from adapters.hf import Steering
from adapters.sites import all_sites
from adapters.spec import AdapterMeta, ModelIdentity, SteeringSpec
from tests.tiny_models import tiny_model

ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM")
HIDDEN, LAYERS = 64, 2


def small_model(arch: str = "LlamaForCausalLM", **kwargs) -> torch.nn.Module:
    kwargs = {"hidden": HIDDEN, "layers": LAYERS, **kwargs}
    return tiny_model(arch, **kwargs)


def random_steering(model: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> Steering:
    """Every site steered with random a, b large enough to change the logits visibly."""
    identity = ModelIdentity.from_config(model.config)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(all_sites(identity.num_layers)), identity.hidden_size)
    a = scale * torch.randn(shape, generator=gen)
    b = scale * torch.randn(shape, generator=gen)
    return Steering(identity, all_sites(identity.num_layers), a, b)


def make_meta(identity: ModelIdentity, **overrides) -> AdapterMeta:
    fields = {
        "name": "test-adapter", "method": "dso", "base_model": "tiny-llama", "identity": identity,
        "training": {"steps": 3, "lr": 0.01, "kl_weight": 0.1, "data": {"set": "synthbias", "rows": 600}},
        "calibration": ({"strength": 0.0, "per_occupation_bias": 0.23, "unambiguous_accuracy": 0.45,
                         "kl_to_base": 0.0},
                        {"strength": 1.0, "per_occupation_bias": 0.051, "unambiguous_accuracy": 0.5,
                         "kl_to_base": 0.0123}),
    }
    fields.update(overrides)
    return AdapterMeta(**fields)


def make_spec(arch: str = "LlamaForCausalLM", seed: int = 1) -> SteeringSpec:
    model = small_model(arch)
    steering = random_steering(model, seed)
    return steering.to_spec(make_meta(steering.identity))

