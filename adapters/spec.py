"""The steering adapter: what the trainer produces and the server applies.

At every site (a normalisation module's output, see `adapters.sites`) the DSO affine map is

    h' = h + ω · (a ⊙ h + b)        a, b ∈ R^d, ω the per-request `fairness_strength`

ω = 0 is the base model, ω = 1 the trained map. `a` and `b` are stacked over sites, so one adapter
is one slot in the steering kernels' tables.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from adapters.methods import METHODS
from adapters.sites import all_sites, parse_site, site_map

FORMAT_VERSION = 1


class AdapterFormatError(ValueError):
    """An adapter file or spec that cannot be used; the message says what, why and how to fix it."""


@dataclass(frozen=True)
class ModelIdentity:
    """What an adapter must match in the model it is attached to."""

    architecture: str
    hidden_size: int
    num_layers: int
    fingerprint: str  # sha256 (16 hex) of the shape-defining config fields, see `from_config`

    @classmethod
    def from_config(cls, config: Any) -> "ModelIdentity":
        """From a transformers `PretrainedConfig` (or its dict)."""
        full = config if isinstance(config, dict) else config.to_dict()
        cfg = full if "hidden_size" in full else full.get("text_config", {})  # multimodal wrappers
        architectures = full.get("architectures") or []
        if not architectures:
            raise AdapterFormatError("the model config names no architecture (config.architectures is empty)")
        architecture = architectures[0]
        shape_fields = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
                        "num_attention_heads", "num_key_value_heads", "vocab_size", "head_dim")
        shape = {"architecture": architecture, **{k: cfg.get(k) for k in shape_fields}}
        digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
        return cls(architecture, int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), digest)

    def mismatch(self, other: "ModelIdentity") -> str | None:
        """A sentence naming the first difference between this adapter's model and `other`, or None."""
        for name in ("architecture", "hidden_size", "num_layers", "fingerprint"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                return f"the adapter was trained for {name} {mine!r}; this model has {theirs!r}"
        return None


@dataclass(frozen=True)
class AdapterMeta:
    """Everything in the file besides the tensors."""

    name: str
    method: str  # one of `adapters.methods.METHODS`, checked by `SteeringSpec.validate`
    base_model: str  # the model's name or path as given to the trainer
    identity: ModelIdentity
    training: dict[str, Any] = field(default_factory=dict)
    # Rows of {"strength": float, "per_occupation_bias": .., "unambiguous_accuracy": .., "kl_to_base": ..}
    calibration: tuple[dict[str, Any], ...] = ()
    format_version: int = FORMAT_VERSION
    # The notice the base model's terms require every derivative to carry (its folder's NOTICE, e.g. Gemma's),
    # None for a model without one. Files written before this field existed read as None.
    license_notice: str | None = None


@dataclass(frozen=True)
class SteeringSpec:
    """A trained adapter.

    Attributes:
        sites: canonical site names, e.g. "layers.3.input_norm" (see `adapters.sites`).
        a: (S, D) fp32, the multiplicative part, one row per site.
        b: (S, D) fp32, the additive part.
        meta: name, method, base model identity, training settings, calibration table.
    """

    sites: tuple[str, ...]
    a: torch.Tensor
    b: torch.Tensor
    meta: AdapterMeta

    def __post_init__(self) -> None:
        self.validate()

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def num_parameters(self) -> int:
        return self.a.numel() + self.b.numel()

    @property
    def version(self) -> str:
        """Content hash of what changes outputs (model identity, sites, a, b): 12 hex digits.

        Metadata such as the calibration table is not part of it, so re-measuring an adapter keeps its
        version; retraining changes it.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.meta.identity.fingerprint, list(self.sites)]).encode())
        h.update(self.a.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.b.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    def site_index(self, site: str) -> int:
        return self.sites.index(site)

    def validate(self) -> None:
        """Internal consistency: shapes, dtypes, finite values, known site names, a known method."""
        ident = self.meta.identity
        if self.meta.format_version != FORMAT_VERSION:
            raise AdapterFormatError(
                f"adapter format version {self.meta.format_version} is not supported (this fairsteer reads "
                f"version {FORMAT_VERSION}); re-export it with a matching fairsteer release")
        if self.meta.method not in METHODS:
            raise AdapterFormatError(f"unknown method {self.meta.method!r}; expected one of {METHODS}")
        if not isinstance(self.meta.license_notice, str | None):
            raise AdapterFormatError(f"license_notice must be text, found {type(self.meta.license_notice).__name__}")
        if not self.sites:
            raise AdapterFormatError("the adapter steers no site")
        if len(set(self.sites)) != len(self.sites):
            raise AdapterFormatError("the adapter lists a site twice")
        try:  # sites.py raises plain ValueErrors; a file naming them is a format error
            site_map(ident.architecture)
            for site in self.sites:
                parse_site(site)
        except ValueError as exc:
            raise AdapterFormatError(str(exc)) from None
        known = set(all_sites(ident.num_layers))
        for site in self.sites:
            if site not in known:
                raise AdapterFormatError(
                    f"site {site!r} does not exist in a {ident.num_layers}-layer {ident.architecture}")
        expected = (len(self.sites), ident.hidden_size)
        for name, t in (("a", self.a), ("b", self.b)):
            if t.dtype != torch.float32:
                raise AdapterFormatError(f"{name} must be float32, found {t.dtype}")
            if tuple(t.shape) != expected:
                raise AdapterFormatError(
                    f"{name} has shape {tuple(t.shape)}; expected (sites, hidden) = {expected}")
            if not torch.isfinite(t).all():
                raise AdapterFormatError(f"{name} contains NaN or infinite values; the adapter is corrupt")

    def check_compatible(self, model: ModelIdentity) -> None:
        """Refuse to attach to a model other than the one this adapter was trained for."""
        problem = self.meta.identity.mismatch(model)
        if problem:
            raise AdapterFormatError(
                f"adapter {self.name!r} does not fit this model: {problem}. Train one for this model with "
                "`fairsteer train --model <this model>`")


def random_spec(identity: ModelIdentity, name: str, seed: int, scale_a: float, scale_b: float,
                base_model: str = "", method: str = "random") -> SteeringSpec:
    """An untrained adapter with a ~ N(0, scale_a²), b ~ N(0, scale_b²) at every site of the model.

    For benchmarks and plumbing tests: it steers every site, so it costs what a full adapter costs.
    """
    sites = all_sites(identity.num_layers)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(sites), identity.hidden_size)
    a = scale_a * torch.randn(shape, generator=gen)
    b = scale_b * torch.randn(shape, generator=gen)
    return SteeringSpec(sites, a, b, AdapterMeta(name=name, method=method, base_model=base_model, identity=identity))
