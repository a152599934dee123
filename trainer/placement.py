"""Where the frozen model runs and in which dtype: the CPU, one GPU, or several GPUs together.

    fairsteer train|eval --device auto|cpu|cuda|cuda:N --dtype auto|float32|bfloat16|float16

`resolve` turns the two settings into a device and a torch dtype: `auto` is CUDA with bfloat16 where a
GPU is visible (float32 on a GPU without bfloat16), else the CPU with float32. `cuda` is GPU 0 when the
model's weights and a step's memory (`trainer.memory`) fit there, else all visible GPUs together:
`max_memory` gives accelerate's `device_map` a per-GPU budget that leaves room for the step, the decoder
layers are spread over the GPUs, and each steering site then lives on its layer's GPU (adapters/hf.py moves
a and b there for the op). The adapter's fp32 master copy and its optimiser stay on `Placement.device`, the
device of the input embedding, where the inputs go too.

`activation_checkpointing(model)` recomputes each decoder layer in the backward pass, for the duration of
a `with` block (the model is left as it was).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from trainer.config import DtypeName
from trainer.errors import ConfigError

DTYPE_OF: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                    "float16": torch.float16}
HEADROOM = 0.9  # share of a GPU's memory a plan may fill: the CUDA context and fragmentation take the rest


@dataclass(frozen=True)
class Placement:
    """Where a loaded model ended up.

    Attributes:
        device: the input embedding's device: inputs, the adapter's fp32 master copy and its optimiser.
        dtype: the model's floating-point dtype (weights and activations).
        devices: every device holding part of the model, in layer order (one unless the model is split).
    """

    device: torch.device
    dtype: torch.dtype
    devices: tuple[str, ...]

    def describe(self) -> dict:
        """What the adapter's metadata records as the training hardware."""
        return {"device": str(self.device), "dtype": dtype_name(self.dtype), "devices": list(self.devices)}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def resolve(device: str, dtype: DtypeName) -> tuple[str, torch.dtype]:
    """("cpu" | "cuda" | "cuda:N", torch dtype) for the settings; raises ConfigError for a GPU not visible.

    "cuda" stays unresolved: `max_memory` decides between GPU 0 and several once the model's size is known.
    """
    cuda = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if device.startswith("cuda"):
        if not cuda:
            raise ConfigError(f"--device {device}: no CUDA device is visible to torch "
                              f"(torch {torch.__version__}); use --device cpu")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible "
                              "(CUDA_VISIBLE_DEVICES); use cuda:0 .. cuda:N-1 or cuda for all of them")
    if dtype == "auto":
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if bf16 else torch.float32
    return device, DTYPE_OF[dtype]


def max_memory(weight_bytes: int, step_bytes: int, gpu_bytes: list[int]) -> dict[int, int] | None:
    """accelerate's per-GPU budget for the weights, or None when GPU 0 holds weights and step alone.

    Args:
        weight_bytes: the model's weights in its dtype.
        step_bytes: what one step needs besides the weights (`trainer.memory.StepMemory`): reserved on
            every GPU, since activations follow their layers and the logits sit on the last one.
        gpu_bytes: each visible GPU's total memory.

    Raises:
        ConfigError: the visible GPUs together cannot hold the weights and the step.
    """
    if weight_bytes + step_bytes <= HEADROOM * gpu_bytes[0]:
        return None
    budget = {i: int(HEADROOM * total - step_bytes) for i, total in enumerate(gpu_bytes)}
    if len(gpu_bytes) == 1 or sum(max(b, 0) for b in budget.values()) < weight_bytes:
        gb = 1024**3
        raise ConfigError(f"the model's weights ({weight_bytes / gb:.1f} GiB) and one step "
                          f"({step_bytes / gb:.1f} GiB) do not fit on the {len(gpu_bytes)} visible GPU(s) "
                          f"({sum(gpu_bytes) / gb:.0f} GiB): use --gradient-checkpointing, fewer "
                          "--occupations-per-step, a smaller --dtype, or more GPUs")
    return {i: b for i, b in budget.items() if b > 0}


def of(model: torch.nn.Module) -> Placement:
    """The placement a loaded model has (read from the model, its `hf_device_map` when split)."""
    device = input_device(model)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    mapped = getattr(model, "hf_device_map", None) or {}
    devices = tuple(dict.fromkeys(_device_name(d) for d in mapped.values())) or (str(device),)
    return Placement(device, dtype, devices)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the token ids go: the input embedding's device."""
    return model.get_input_embeddings().weight.device


def _device_name(d) -> str:
    return f"cuda:{d}" if isinstance(d, int) else str(d)


@contextmanager
def activation_checkpointing(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block, every decoder layer of `model` keeps only its input for the backward pass and
    recomputes the rest there (`torch.utils.checkpoint`, non-reentrant, so gradients reach the steering
    parameters that the layer's hooks use although the model is frozen). The backward pass must run inside
    the block too, with the same hooks attached. Transformers checkpoints a layer only in training mode: the
    layers themselves are switched to it, not their submodules, so no dropout turns on.

    Raises:
        ConfigError: the model's layers do not support checkpointing.
    """
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ConfigError(f"--gradient-checkpointing: {type(model).__name__}'s layers do not support "
                          "activation checkpointing; train without it")
    saved = [(m, m.gradient_checkpointing, m.training, m.__dict__.get("_gradient_checkpointing_func"))
             for m in layers]
    try:
        for m in layers:
            m.gradient_checkpointing = True
            m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
            m.training = True
        yield
    finally:
        for m, enabled_before, training, func in saved:
            m.gradient_checkpointing, m.training = enabled_before, training
            if func is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = func
