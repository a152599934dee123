"""Applying a steering adapter to a Hugging Face transformers model (trainer and evaluation; not vLLM).

At each site (a normalisation module's output, see `adapters.sites`) the forward hook replaces h by

    h' = h + ω · (a ⊙ h + b)        computed by `steering_kernels.reference.steer_ref` (differentiable)

with ω one float for the whole batch or one value per batch row. Usage:

    steering = Steering.from_spec(adapters.io.load(path))      # or Steering.zeros(identity) to train
    with attach(model, steering, strength=0.5) as handle:
        model(**batch)                                          # steered at 0.5
        handle.strength = torch.tensor([0.0, 1.0])              # per row, for the next forward
        model.generate(...)                                     # KV cache works: the map is per token

The model may run in bf16/fp16 and on any device, or be split over several GPUs (`device_map`): a and
b stay fp32 where they are kept (the optimiser's device); each site's op gets a copy on that site's device,
computes in fp32 and returns the model's dtype (`steer_ref`).

Hooks live only inside the `with` block and are removed in `finally`, so the model is restored exactly
(also after an exception). The model's parameters are frozen inside the block and their
`requires_grad` flags restored on exit: gradients reach `a` and `b` only.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from adapters.sites import all_sites, module_path
from adapters.spec import AdapterFormatError, AdapterMeta, ModelIdentity, SteeringSpec
from steering_kernels.reference import steer_ref

Strength = float | torch.Tensor


class Steering(nn.Module):
    """Trainable steering parameters: `a`, `b` of shape (S, D) fp32, one row per site in `sites`."""

    def __init__(self, identity: ModelIdentity, sites: tuple[str, ...], a: torch.Tensor, b: torch.Tensor,
                 meta: AdapterMeta | None = None) -> None:
        super().__init__()
        self.identity = identity
        self.sites = tuple(sites)
        self.meta = meta  # kept from `from_spec`, so `to_spec()` can write it back unchanged
        self.a = nn.Parameter(a.detach().to(torch.float32).clone())
        self.b = nn.Parameter(b.detach().to(torch.float32).clone())
        expected = (len(self.sites), identity.hidden_size)
        if tuple(self.a.shape) != expected or tuple(self.b.shape) != expected:
            raise ValueError(f"a and b must have shape (sites, hidden) = {expected}; "
                             f"got {tuple(self.a.shape)} and {tuple(self.b.shape)}")

    @classmethod
    def from_spec(cls, spec: SteeringSpec) -> "Steering":
        return cls(spec.meta.identity, spec.sites, spec.a, spec.b, spec.meta)

    @classmethod
    def zeros(cls, identity: ModelIdentity, sites: tuple[str, ...] | None = None) -> "Steering":
        """The identity map (a = b = 0): the usual starting point for training. Default: every site."""
        sites = tuple(sites) if sites is not None else all_sites(identity.num_layers)
        shape = (len(sites), identity.hidden_size)
        return cls(identity, sites, torch.zeros(shape), torch.zeros(shape))

    def to_spec(self, meta: AdapterMeta | None = None) -> SteeringSpec:
        """A detached CPU snapshot as an adapter (validated), with `meta` or the one it was loaded with."""
        meta = meta if meta is not None else self.meta
        if meta is None:
            raise ValueError("to_spec needs an AdapterMeta (name, method, training settings ...)")
        if meta.identity != self.identity:
            raise ValueError(f"meta.identity {meta.identity} differs from this steering's {self.identity}")
        snapshot = [t.detach().to("cpu", torch.float32).clone() for t in (self.a, self.b)]
        return SteeringSpec(self.sites, snapshot[0], snapshot[1], meta)


class AttachedSteering:
    """What `attach` yields: set `strength` between forwards (a float, or a (batch,) tensor)."""

    def __init__(self, steering: Steering, strength: Strength) -> None:
        self.steering = steering
        self.strength = strength

    @property
    def strength(self) -> Strength:
        return self._strength

    @strength.setter
    def strength(self, value: Strength) -> None:
        if isinstance(value, torch.Tensor):
            if value.dim() != 1:
                raise ValueError(f"a strength tensor must have shape (batch,); got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError("strength contains NaN or infinite values")
            value = value.detach().to(torch.float32)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"strength must be finite, got {value}")
        self._strength = value

    def _per_token(self, h: torch.Tensor) -> torch.Tensor:
        """The strength of every token of h (..., D), flattened to (T,) fp32 on h's device."""
        lead = h.shape[:-1]
        if not isinstance(self._strength, torch.Tensor):
            return torch.full((lead.numel(),), self._strength, dtype=torch.float32, device=h.device)
        s = self._strength.to(h.device)
        if h.dim() < 2 or s.shape[0] != lead[0]:
            raise ValueError(f"{s.shape[0]} per-row strengths for a batch of activations shaped "
                             f"{tuple(h.shape)}; give one strength per batch row")
        return s.view(-1, *([1] * (len(lead) - 1))).expand(lead).reshape(-1)

    def _hook(self, row: int):
        def hook(module: nn.Module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"{type(module).__name__} returned {type(output).__name__}; steering "
                                "expects a norm module returning one tensor")
            # (1, D), steer_ref's slot 0: a differentiable copy on the site's device in the op's math
            # dtype (fp32; fp64 for fp64 activations), so the gradient reaches the fp32 master copy
            # wherever the optimiser keeps it, also when the model is split over several GPUs.
            math = torch.promote_types(output.dtype, torch.float32)
            a, b = (t[row:row + 1].to(device=output.device, dtype=math)
                    for t in (self.steering.a, self.steering.b))
            flat = output.reshape(-1, output.shape[-1])  # (T, D)
            return steer_ref(flat, a, b, self._per_token(output)).view_as(output)
        return hook


def model_identity(model: nn.Module) -> ModelIdentity:
    return ModelIdentity.from_config(model.config)


@contextmanager
def attach(model: nn.Module, steering: "Steering | SteeringSpec", strength: Strength = 1.0,
           freeze_model: bool = True) -> Iterator[AttachedSteering]:
    """Steer `model` inside the `with` block; the model is left exactly as it was afterwards.

    Args:
        model: a transformers causal LM of a supported architecture (see `adapters.sites`).
        steering: the adapter's parameters (or a loaded `SteeringSpec`, applied without gradients);
            checked against `model.config` before any hook is placed.
        strength: ω for every row (float) or per batch row ((batch,) tensor); settable on the handle.
        freeze_model: turn off `requires_grad` on the model's parameters inside the block (restored on
            exit), so training backpropagates to `a` and `b` only. Off only to study joint gradients.

    Raises:
        AdapterFormatError: the adapter was made for another model, or a site has no module here.
    """
    if isinstance(steering, SteeringSpec):
        steering = Steering.from_spec(steering).requires_grad_(False)
    identity = model_identity(model)
    problem = steering.identity.mismatch(identity)
    if problem:
        raise AdapterFormatError(f"cannot attach steering to this model: {problem}")
    handle = AttachedSteering(steering, strength)
    hooks, thawed = [], []
    try:
        for row, site in enumerate(steering.sites):
            path = module_path(identity.architecture, site)
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise AdapterFormatError(f"site {site!r} maps to module {path!r}, which this "
                                         f"{identity.architecture} does not have") from None
            hooks.append(module.register_forward_hook(handle._hook(row)))
        if freeze_model:
            thawed = [p for p in model.parameters() if p.requires_grad]
            for p in thawed:
                p.requires_grad_(False)
        yield handle
    finally:
        for h in hooks:
            h.remove()
        for p in thawed:
            p.requires_grad_(True)
