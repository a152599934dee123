"""The adapters a server has loaded, as the HTTP layer sees them (names, versions, metadata).

The engine plugin (server.vllm_plugin) holds the tensors; this side only needs what requests are
validated against and what `GET /v1/steerings` shows. Both read the same files, so the version (the
content hash `SteeringSpec.version`) echoed in responses is the version the engine applies.

A registry is an immutable value: changing adapters at run time means building a new one and swapping it
(server/admin.py), so a request validated against one registry is never half-served by another.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters import io
from adapters.spec import AdapterFormatError, AdapterMeta, ModelIdentity
from server.engine_boundary import slot_name
from server.errors import ServeConfigError
from server.protocol import Policy


@dataclass(frozen=True)
class LoadedAdapter:
    name: str             # the serving name (NAME in --adapter NAME=FILE), what requests put in `steering`
    path: str
    version: str          # SteeringSpec.version, a content hash
    sites: tuple[str, ...]
    num_parameters: int
    meta: AdapterMeta

    @property
    def slot(self) -> str:
        """The engine slot of this version."""
        return slot_name(self.name, self.version)

    def describe(self) -> dict[str, Any]:
        meta = asdict(self.meta)
        return {
            "id": self.name, "object": "steering", "version": self.version, "file": self.path,
            "trained_name": meta.pop("name"), "method": meta.pop("method"),
            "base_model": meta.pop("base_model"), "identity": meta.pop("identity"),
            "sites": list(self.sites), "num_parameters": self.num_parameters,
            "calibration": list(meta.pop("calibration")), "training": meta.pop("training"),
            "format_version": meta.pop("format_version"),
            "license_notice": meta.pop("license_notice"),  # the base model's terms, which bind the adapter too
        }


@dataclass(frozen=True)
class SteeringRegistry:
    model: str                          # the served model name (the metrics' `model` label)
    adapters: dict[str, LoadedAdapter]
    default_adapter: str | None
    default_strength: float
    max_strength: float

    @property
    def policy(self) -> Policy:
        return Policy({name: a.version for name, a in self.adapters.items()}, self.default_adapter,
                      self.default_strength, self.max_strength)

    def describe(self) -> dict[str, Any]:
        """The body of `GET /v1/steerings`."""
        data = [dict(a.describe(), default=(name == self.default_adapter)) for name, a in self.adapters.items()]
        return {"object": "list", "model": self.model, "default_adapter": self.default_adapter,
                "default_strength": self.default_strength, "max_strength": self.max_strength, "data": data}


def load_registry(model: str, table: dict[str, str], identity: ModelIdentity | None,
                  default_adapter: str | None = None, default_strength: float = 0.0,
                  max_strength: float = 2.0) -> SteeringRegistry:
    """Read and check every adapter file and the options.

    Each file is read once, here; the engine reads it again in its own process and must find the same
    version. Raises `AdapterFormatError` naming the first bad adapter, `ServeConfigError` for inconsistent
    options.

    Args:
        model: the served model name, used as a label only.
        table: serving name -> adapter file, in command-line order (the first is the default adapter).
        identity: the served model's identity; each adapter must have been trained for it.
        default_adapter: overrides "the first adapter" as the one requests get without `steering`.
        default_strength: the strength requests get without `fairness_strength`.
        max_strength: requests above it are refused with HTTP 400.
    """
    _check_strengths(default_strength, max_strength, bool(table))
    adapters = {}
    for name, path in table.items():
        try:
            spec = io.load(path, model=identity)
        except AdapterFormatError as exc:
            raise AdapterFormatError(f"adapter {name!r}: {exc}") from None
        adapters[name] = LoadedAdapter(name, str(Path(path)), spec.version, spec.sites,
                                       spec.num_parameters, spec.meta)
    if default_adapter is None and adapters:
        default_adapter = next(iter(adapters))
    if default_adapter is not None and default_adapter not in adapters:
        raise ServeConfigError(f"--default-adapter {default_adapter!r} is not one of the loaded adapters "
                               f"({', '.join(adapters) or 'none'}); add --adapter {default_adapter}=FILE")
    return SteeringRegistry(model, adapters, default_adapter, default_strength, max_strength)


def _check_strengths(default: float, maximum: float, have_adapters: bool) -> None:
    if not (math.isfinite(maximum) and maximum >= 0):
        raise ServeConfigError(f"--max-fairness-strength must be a finite number >= 0; got {maximum}")
    if not (math.isfinite(default) and 0 <= default <= maximum):
        raise ServeConfigError(f"--default-fairness-strength must be between 0 and --max-fairness-strength "
                               f"({maximum}); got {default}")
    if default > 0 and not have_adapters:
        raise ServeConfigError(f"--default-fairness-strength {default} needs an adapter to apply; "
                               "add --adapter NAME=FILE or leave the default strength at 0")
