"""Steered variants of vLLM's own model classes: same weights, same kernels, plus the steering op.

`FairsteerLlamaForCausalLM` (and one for every architecture with a site map) are vLLM's classes with two
additions:
  1. at construction, every norm module that some loaded adapter steers becomes a steered norm: its
     class gains `_SteeredNorm` in front (weights, names and vLLM's norm kernel are untouched) and it
     holds that site's (K, D) tables of all K adapters (zeros where an adapter does not steer the site);
  2. `forward` first fills the per-token strength/adapter buffers from the forward context, then runs the
     (possibly torch.compiled) decoder unchanged.

Parallel engines: every tensor-parallel rank holds every site (norms are replicated). Under pipeline
parallelism each stage builds and steers only the sites of its own layers (`local_norm` skips vLLM's
`PPMissingLayer` placeholders); a later stage has no token ids, but its runner's logits processor sees the
same batch updates, so `prepare_step` gives its tokens the same strengths (docs/distributed.md).

How a steered norm runs (`site_op`, chosen once per site; bench/README.md has the measurements):
  "separate"  `fairsteer.steer(norm(x))`: vLLM's own norm, then the opaque steering op.
  "fused"     plain RMSNorm sites fed by a residual: the opaque `fairsteer.rms_norm_steer` does add + RMSNorm +
              steering in one call. The default on CUDA (the Triton kernel) and on CPU in eager mode with fp32 weights: there
              vLLM's RMSNorm is its "native" torch code (vllm.ir.ops), which `steering_kernels`' CPU norm
              repeats op for op (same bits, tested against vLLM's module) at the same cost.
  "inline"    CPU under torch.compile: `steer_ref`'s tensor ops in the traced graph, reading the per-token
              buffers, compiled by Inductor with the norm around them (no fp contraction, so the reference's
              bits), where an opaque op would cost a call and several passes per site.
Strength 0 is bit-identical to plain vLLM in every default choice (forcing "fused" on CPU with bf16/fp16 may
round unlike vLLM's norm). FAIRSTEER_FUSED_NORM=1 forces "fused" on plain RMSNorm
sites, =0 forbids it ("separate" or, on CPU under torch.compile, "inline"); unset picks as above.
"""

import json
import os
from typing import Literal

import torch
from torch import nn
from vllm.config import CompilationMode
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.models.gemma3 import Gemma3ForCausalLM
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.mistral import MistralForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.utils import PPMissingLayer

import server.vllm_plugin.ops  # noqa: F401  (registers torch.ops.fairsteer.*)
from adapters import io
from adapters.sites import all_sites, module_path
from adapters.spec import AdapterFormatError, ModelIdentity
from server.engine_boundary import (
    ADAPTERS_KEY,
    BASE_ARCH_KEY,
    CAPACITY_KEY,
    FREE_SLOT,
    SUPPORTED_ARCHITECTURES,
)
from server.vllm_plugin.processor import PROCESSOR_FQCN
from server.vllm_plugin.state import STATE
from steering_kernels import load_cpu_kernel, steer_ref

SiteOp = Literal["separate", "fused", "inline"]


class _SteeredNorm:
    """Placed before a vLLM norm class in the MRO; `fairsteer_a`/`fairsteer_b` are (K, D) fp32 buffers."""

    fairsteer_site_op: SiteOp = "separate"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        a, b = self.fairsteer_a, self.fairsteer_b
        if self.fairsteer_site_op == "fused" and residual is not None:
            return torch.ops.fairsteer.rms_norm_steer(x, residual, self.weight, self.variance_epsilon, a, b)
        steer = _steer_inline if self.fairsteer_site_op == "inline" else torch.ops.fairsteer.steer
        if residual is None:
            return steer(super().forward(x), a, b)
        h, residual = super().forward(x, residual)
        return steer(h, a, b), residual


def _steer_inline(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Traced by torch.compile: the buffers are graph inputs read in place at every step, never constants.
    num_tokens = h.shape[0]
    return steer_ref(h, a, b, STATE.strength[:num_tokens], STATE.index[:num_tokens])


_STEERED_CLASSES: dict[type, type] = {}


def _steer_module(norm: nn.Module, a: torch.Tensor, b: torch.Tensor, compiled: bool) -> None:
    cls = type(norm)
    if cls not in _STEERED_CLASSES:
        _STEERED_CLASSES[cls] = type(f"Steered{cls.__name__}", (_SteeredNorm, cls), {})
    op = site_op(norm, a.device, compiled)
    norm.__class__ = _STEERED_CLASSES[cls]
    # Not persistent: the checkpoint has no such tensors and the weight loader must not expect them.
    norm.register_buffer("fairsteer_a", a, persistent=False)
    norm.register_buffer("fairsteer_b", b, persistent=False)
    norm.fairsteer_site_op = op


def site_op(norm: nn.Module, device: torch.device, compiled: bool) -> SiteOp:
    """How the vLLM norm `norm` will run once steered (module docstring); fused only where a residual comes in."""
    choice = os.environ.get("FAIRSTEER_FUSED_NORM", "")
    if choice not in ("", "0", "1"):
        raise ValueError(f"FAIRSTEER_FUSED_NORM={choice!r}: use 1 (fused norm+steer), 0 (separate) or unset")
    plain_rms = type(norm) is RMSNorm and norm.has_weight and norm.variance_size_override is None
    on_cpu = device.type == "cpu"
    # On CPU the fused op is exact to vLLM's native norm only where no dtype cast can round (fp32).
    fused_by_default = not on_cpu or (not compiled and norm.weight.dtype == torch.float32)
    if plain_rms and (choice == "1" or (choice == "" and fused_by_default)):
        return "fused"
    return "inline" if on_cpu and compiled else "separate"


def adapter_table(hf_config) -> list[tuple[str, str, str]]:
    """(slot name, file, version) of each start-up adapter; adapter index = position + 1."""
    return [(name, path, version) for name, path, version in json.loads(getattr(hf_config, ADAPTERS_KEY, "[]"))]


def _identity(hf_config) -> ModelIdentity:
    config = hf_config.to_dict()
    config["architectures"] = [getattr(hf_config, BASE_ARCH_KEY)]
    return ModelIdentity.from_config(config)


def install_steering(model: nn.Module, vllm_config) -> None:
    """Load the adapters named in the config and turn their sites into steered norms."""
    model_config = vllm_config.model_config
    hf_config = model_config.hf_config
    if PROCESSOR_FQCN not in [p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}"
                              for p in (model_config.logits_processors or [])]:
        raise RuntimeError(
            f"the steered model needs the logits processor {PROCESSOR_FQCN} (it carries each request's "
            "strength to the model); without it every request would be served unsteered. Build the "
            "engine arguments with server.vllm_plugin.engine_kwargs()")
    base_arch = getattr(hf_config, BASE_ARCH_KEY)
    identity = _identity(hf_config)
    table = adapter_table(hf_config)
    specs = [_load_unchanged(name, path, version, identity) for name, path, version in table]
    scheduler = vllm_config.scheduler_config
    device = next(model.parameters()).device
    STATE.allocate(scheduler.max_num_seqs, scheduler.max_num_batched_tokens, device)
    STATE.adapter_names = tuple(name for name, _, _ in table)

    compiled = vllm_config.compilation_config.mode != CompilationMode.NONE
    capacity = getattr(hf_config, CAPACITY_KEY, 0)
    if capacity:  # run-time loading: every site, all rows now, so later loads only write in place
        sites = list(all_sites(identity.num_layers))
        STATE.adapter_names += (FREE_SLOT,) * (capacity - len(specs))
    else:
        sites = sorted({site for spec in specs for site in spec.sites})
    local = []
    for site in sites:
        norm = local_norm(model, base_arch, site)
        if norm is None:
            continue  # another pipeline stage holds this layer
        a = torch.zeros(max(capacity, len(specs)), identity.hidden_size, dtype=torch.float32, device=device)  # (K, D)
        b = torch.zeros_like(a)
        for k, spec in enumerate(specs):
            if site in spec.sites:
                a[k] = spec.a[spec.site_index(site)]
                b[k] = spec.b[spec.site_index(site)]
        if not hasattr(norm, "variance_epsilon"):
            raise AdapterFormatError(f"site {site!r} of {base_arch} is a {type(norm).__name__}, not a norm")
        _steer_module(norm, a, b, compiled)
        local.append(site)
    model.fairsteer_sites = tuple(local)  # the sites this process steers (its pipeline stage's)
    if device.type == "cpu":
        load_cpu_kernel()  # build it (~15 s once per machine) at start-up, not in the first steered step


def local_norm(model: nn.Module, base_arch: str, site: str) -> nn.Module | None:
    """The norm module of `site` in this process, or None when another pipeline stage holds it.

    Under pipeline parallelism vLLM puts a `PPMissingLayer` where a layer (or the final norm) lives on
    another stage; the path through it does not exist here.
    """
    module = model
    for part in module_path(base_arch, site).split("."):
        if isinstance(module, PPMissingLayer):
            return None
        module = module.get_submodule(part)
    return None if isinstance(module, PPMissingLayer) else module


def _load_unchanged(name: str, path: str, version: str, identity: ModelIdentity):
    """Read again here, in the engine process: the file must still be the version the front end checked."""
    spec = io.load(path, identity)
    if spec.version != version:
        raise AdapterFormatError(f"adapter {name!r}: {path} changed while the server started (version "
                                 f"{spec.version}, expected {version}); restart once the file is final")
    return spec


def prepare_step(positions: torch.Tensor) -> None:
    """Fill this step's per-token strength and adapter index (before the compiled decoder runs)."""
    num_tokens = positions.shape[-1]
    query_start_loc = None
    if is_forward_context_available():
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):
            raise NotImplementedError("fairsteer does not support micro-batching (DBO); disable it")
        if metadata:
            query_start_loc = next(iter(metadata.values())).query_start_loc
    STATE.refresh_tokens(num_tokens, query_start_loc)


class _SteeredCausalLM:
    """Mixin before a vLLM *ForCausalLM class."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        install_steering(self, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        prepare_step(positions)
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)


_VLLM_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
}

# Base architecture (as in a Hugging Face config) -> its steered class: vLLM's class behind the mixin.
STEERED_MODELS: dict[str, type[nn.Module]] = {
    arch: type(f"Fairsteer{arch}", (_SteeredCausalLM, _VLLM_CLASSES[arch]), {}) for arch in SUPPORTED_ARCHITECTURES
}
# Module attributes too, so the classes pickle and import by name like vLLM's own.
globals().update({cls.__name__: cls for cls in STEERED_MODELS.values()})
