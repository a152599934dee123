"""Device and dtype settings, the multi-GPU plan, activation checkpointing and the memory estimate
(trainer/placement.py, trainer/memory.py) on the CPU, with tiny random models."""

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from adapters.hf import Steering, attach, model_identity
from trainer import dso, memory, placement, rewards, session
from trainer.checkpoint import TrainState
from trainer.config import DSOConfig
from trainer.errors import ConfigError
from trainer.task_registry import load_splits

GIB = 1024**3


def test_auto_is_the_cpu_in_float32_without_a_gpu_and_a_gpu_in_bf16_with_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement.resolve("auto", "auto") == ("cpu", torch.float32)
    assert placement.resolve("cpu", "bfloat16") == ("cpu", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert placement.resolve("auto", "auto") == ("cuda", torch.bfloat16)
    assert placement.resolve("cuda:1", "float16") == ("cuda:1", torch.float16)
    with pytest.raises(ConfigError, match="only 2 GPU"):
        placement.resolve("cuda:2", "auto")


def test_a_gpu_that_is_not_there_is_a_config_error_naming_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cpu"):
        placement.resolve("cuda", "auto")
    with pytest.raises(ConfigError, match="--device"):
        DSOConfig(device="gpu0")


def test_one_gpu_when_the_model_fits_else_a_budget_on_each_that_leaves_room_for_the_step():
    assert placement.max_memory(16 * GIB, 30 * GIB, [80 * GIB] * 4) is None, "an 8B model fits one 80 GB GPU"
    budget = placement.max_memory(140 * GIB, 20 * GIB, [80 * GIB] * 4)  # a 70B model in bf16
    assert budget == {i: int(0.9 * 80 * GIB - 20 * GIB) for i in range(4)}
    assert sum(budget.values()) >= 140 * GIB
    with pytest.raises(ConfigError, match="--gradient-checkpointing"):
        placement.max_memory(140 * GIB, 20 * GIB, [80 * GIB])


def _fixed_batch(cfg: DSOConfig):
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    return dso.BatchSampler(splits.train, splits.train_resolvable, tiny_tokenizer(), cfg)


def _grads(model, sampler, cfg, checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
    steering = Steering.zeros(model_identity(model))
    with torch.no_grad():
        steering.b.fill_(0.05)  # away from 0, so every term has a gradient
    with placement.activation_checkpointing(model, checkpointing):
        dso.objective(model, steering, sampler.batch(0), rewards.MajorityTracker(), cfg, 0, backward=True)
    return steering.a.grad, steering.b.grad


def test_activation_checkpointing_gives_the_same_gradients_and_restores_the_model():
    cfg = DSOConfig(task="continuation", n_train=40, n_eval=4, occupations_per_step=4)
    model, sampler = tiny_model(), _fixed_batch(cfg)
    plain = _grads(model, sampler, cfg, False)
    recomputed = _grads(model, sampler, cfg, True)
    for p, r in zip(plain, recomputed):
        # The recomputation repeats the same fp32 ops in the same order: equal up to (here: no) rounding.
        torch.testing.assert_close(r, p, rtol=1e-6, atol=1e-9, msg="checkpointing must not change gradients")
    layers = model.model.layers
    assert not any(layer.training or layer.gradient_checkpointing for layer in layers), "the model is restored"


def test_a_bf16_model_trains_an_fp32_adapter_with_fp32_gradients_and_optimiser_state():
    cfg = DSOConfig(task="continuation", n_train=40, n_eval=4, occupations_per_step=4, steps=2)
    model = tiny_model().to(torch.bfloat16)
    steering = Steering.zeros(model_identity(model))
    state = TrainState(steering, torch.optim.Adam(steering.parameters(), lr=0.01), rewards.MajorityTracker(),
                       torch.Generator().manual_seed(0))
    dso.step(model, state, _fixed_batch(cfg), cfg, 0)
    assert steering.a.dtype == steering.a.grad.dtype == torch.float32
    assert all(v.dtype == torch.float32 for s in state.optimizer.state.values()
               for k, v in s.items() if k != "step"), "Adam's moments stay fp32"
    assert steering.b.abs().sum() > 0
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), attach(model, steering, 1.0):
        assert model(input_ids=ids).logits.dtype == torch.bfloat16, "the sites return the model's dtype"


@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_estimate_is_within_25_percent_of_the_measured_peak_in_bf16(checkpointing):
    """A step's measured peak on the CPU (torch's profiler) against `trainer.memory.estimate`."""
    cfg = DSOConfig(task="continuation", n_train=40, n_eval=4, occupations_per_step=4)
    model = tiny_model(hidden=128, layers=4).to(torch.bfloat16)
    sampler = _fixed_batch(cfg)
    steering = Steering.zeros(model_identity(model))
    state = TrainState(steering, torch.optim.Adam(steering.parameters()), rewards.MajorityTracker(),
                       torch.Generator())
    prompts = sampler.batch(1).prompts
    with placement.activation_checkpointing(model, checkpointing):
        dso.step(model, state, sampler, cfg, 0)  # Adam's state exists before the measured step
        measured = memory.measure_peak(lambda: dso.step(model, state, sampler, cfg, 0), "cpu")
    estimate = memory.estimate(model.config, torch.bfloat16, len(prompts), max(len(p.ids) for p in prompts),
                               len(steering.sites), checkpointing, weights=memory.model_bytes(model))
    # Measured 0.82-1.09 of the estimate over widths 128-256, 2-8 layers, both dtypes (trainer/memory.py).
    assert 0.75 <= measured / estimate.step <= 1.25, (measured, estimate)
    # Counted from the config on the meta device: the parameters; the loaded model adds a few buffers.
    assert memory.weight_bytes(model.config, torch.bfloat16) == pytest.approx(estimate.weights, rel=0.01)


def _mem(total_gib: float) -> memory.StepMemory:
    return memory.StepMemory(weights=int(total_gib * GIB), adapter=0, activations=0, logits=0)


def test_checkpointing_is_turned_on_only_when_the_step_fits_no_other_way():
    choose = session.choose_checkpointing
    assert choose(False, _mem(40), _mem(25), 72 * GIB, "cuda:0") is False, "fits: as asked"
    assert choose(True, _mem(40), _mem(25), 72 * GIB, "cuda:0") is True
    assert choose(False, _mem(90), _mem(60), 72 * GIB, "cuda:0") is True, "fits only checkpointed: on"
    with pytest.raises(ConfigError, match="--occupations-per-step"):
        choose(False, _mem(120), _mem(90), 72 * GIB, "cuda:0")


def test_a_model_too_large_for_one_gpu_is_spread_over_the_visible_ones(monkeypatch):
    from types import SimpleNamespace

    from tiny_models import tiny_config

    from trainer import base_model

    config, cfg = tiny_config(hidden=512, layers=4), DSOConfig(occupations_per_step=1)
    weights = memory.weight_bytes(config, torch.float32)
    rows = 2 * 1 + 2 * cfg.resolvable_per_step + cfg.generic_per_step + cfg.description_per_step  # the nominal batch
    step = memory.estimate(config, torch.float32, rows, base_model.NOMINAL_LENGTH, 9, weights=0).step
    gpu = int((0.75 * weights + step) / placement.HEADROOM)  # two such "GPUs" hold it, one does not
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=gpu))
    placed = base_model._device_map(config, "cuda", torch.float32, cfg)
    assert placed["device_map"] == "auto" and set(placed["max_memory"]) == {0, 1}
    assert sum(placed["max_memory"].values()) >= weights
    assert base_model._device_map(config, "cuda:1", torch.float32, None) == {"device_map": "cuda:1"}
    assert base_model._device_map(config, "cpu", torch.float32, None) == {}
