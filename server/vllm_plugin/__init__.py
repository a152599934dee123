"""fairsteer's vLLM plugin: per-request steering strength and adapter inside the vLLM engine.

How the pieces meet (what both sides agree on is in server/engine_boundary.py):
    register()               the `vllm.general_plugins` entry point, run by vLLM in every process: registers
                             the steered architectures (`Fairsteer<Arch>`, models.py) with vLLM's ModelRegistry
    engine_kwargs()          the engine arguments that select the steered architecture, carry the adapter
                             table into the engine and install the state-tracking processor
    offline_engine_kwargs()  the same for vLLM's offline `LLM`, from adapter files
    processor.py             validates and tracks each request's `extra_args` (fairsteer_adapter/_strength)
    state.py, ops.py         the fixed per-row/per-token buffers and the registered custom op
    reload.py                the worker extension that writes adapter slots at run time

Usage (offline):
    kwargs = offline_engine_kwargs("path/to/model", {"fair": "fair.safetensors"})
    llm = LLM(model="path/to/model", **kwargs, ...)
    llm.generate(prompt, SamplingParams(extra_args={"fairsteer_adapter": "fair", "fairsteer_strength": 0.5},
                                        cache_salt=...))  # prefix caching: salt per steering setting
"""

import json
import os
from importlib.metadata import entry_points
from pathlib import Path

from server.engine_boundary import (
    ADAPTERS_KEY,
    BASE_ARCH_KEY,
    CAPACITY_KEY,
    ENGINE_ENV,
    FREE_SLOT,
    SUPPORTED_ARCHITECTURES,
    adapter_name_problem,
    steered_architecture,
)
from server.vllm_plugin.processor import PROCESSOR_FQCN, publish_slot_names

__all__ = ["PROCESSOR_FQCN", "PluginError", "engine_kwargs", "offline_engine_kwargs", "register"]

ENTRY_POINT = "fairsteer"


class PluginError(RuntimeError):
    """The plugin would not be active in the engine: serving would silently drop steering."""


def register() -> None:
    """vLLM plugin entry point; safe to call more than once."""
    from vllm import ModelRegistry

    from server.vllm_plugin.models import STEERED_MODELS

    for base, cls in STEERED_MODELS.items():
        ModelRegistry.register_model(steered_architecture(base), cls)


def check_plugin_active(architecture: str) -> None:
    """Fail loudly unless vLLM's own plugin loading registers `architecture` in this process.

    vLLM loads plugins in each of its processes and only *logs* a plugin that fails to import, after
    which the steered architecture is unknown; checking here turns that into a start-up error.
    """
    from vllm import envs
    from vllm.plugins import load_general_plugins

    ours = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == ENTRY_POINT]
    if not ours:
        raise PluginError("the fairsteer vLLM plugin is not installed (no `vllm.general_plugins` entry point "
                          "named 'fairsteer'): run `pip install -e .` in the fairsteer checkout")
    allowed = envs.VLLM_PLUGINS
    if allowed is not None and ENTRY_POINT not in allowed:
        raise PluginError(f"VLLM_PLUGINS={','.join(allowed)!r} excludes the fairsteer plugin, so the engine "
                          "would not know the steered model; add 'fairsteer' to VLLM_PLUGINS or unset it")
    try:
        ours[0].load()
    except Exception as exc:
        raise PluginError(f"the fairsteer vLLM plugin fails to import ({type(exc).__name__}: {exc}); "
                          "vLLM would only log this and serve without steering") from exc
    load_general_plugins()
    from vllm import ModelRegistry

    if architecture not in ModelRegistry.get_supported_archs():
        raise PluginError(f"vLLM's plugin loading did not register {architecture!r}; check that the "
                          "`vllm.general_plugins` entry point 'fairsteer' points to "
                          "server.vllm_plugin:register")


def engine_kwargs(identity, slots: list[tuple[str, str, str]], capacity: int = 0) -> dict:
    """The vLLM engine arguments that enable steering for a model of `identity` (adapters.spec.ModelIdentity).

    Args:
        slots: (slot name, file, version) of each adapter the engine starts with, already validated
            against the model; order fixes the adapter indices (1, 2, ...). May be empty: the processor
            is still installed, so any steering request is refused rather than ignored. The engine reads
            each file again in its own process and refuses one whose version changed.
        capacity: for adapters at run time (`server.vllm_plugin.reload`): every site gets this many
            adapter rows when the model is built, before any graph is compiled or captured, so loading
            later only writes rows in place. 0: only the sites and rows of `slots`.

    Returns {"hf_overrides": ..., "logits_processors": [...], "worker_extension_cls": ...} to merge into
    the engine arguments, and sets ENGINE_ENV in os.environ. Raises PluginError when the plugin would not
    be active in the engine or cannot steer the architecture.
    """
    from server.vllm_plugin.reload import EXTENSION_FQCN

    kwargs: dict = {"logits_processors": [PROCESSOR_FQCN]}
    if identity.architecture not in SUPPORTED_ARCHITECTURES:
        if slots or capacity:
            raise PluginError(f"fairsteer cannot steer {identity.architecture} models in vLLM (supported: "
                              f"{', '.join(SUPPORTED_ARCHITECTURES)}); serve without adapters")
        return kwargs
    if capacity and capacity < len(slots):
        raise PluginError(f"slot capacity {capacity} is below the {len(slots)} adapters given")
    steered = steered_architecture(identity.architecture)
    check_plugin_active(steered)
    kwargs["hf_overrides"] = {"architectures": [steered], ADAPTERS_KEY: json.dumps([list(s) for s in slots]),
                              BASE_ARCH_KEY: identity.architecture}
    if capacity:
        kwargs["hf_overrides"][CAPACITY_KEY] = capacity
    kwargs["worker_extension_cls"] = EXTENSION_FQCN
    os.environ.update(ENGINE_ENV)
    return kwargs


def offline_engine_kwargs(model: str, adapters: dict[str, str], capacity: int = 0) -> dict:
    """`engine_kwargs` for vLLM's offline `LLM` in this process: reads the model config and each adapter
    file once, names each slot by its adapter name, and publishes those names to the front-end checks.

    Raises AdapterFormatError for a bad adapter or name, PluginError as `engine_kwargs`.
    """
    from adapters import io
    from adapters.spec import AdapterFormatError, ModelIdentity

    identity = ModelIdentity.from_config(_model_config(model))
    slots = []
    for name, path in adapters.items():
        if problem := adapter_name_problem(name):
            raise AdapterFormatError(problem)
        path = str(Path(path).resolve())
        try:
            slots.append((name, path, io.load(path, identity).version))
        except AdapterFormatError as exc:
            raise AdapterFormatError(f"adapter {name!r}: {exc}") from None
    kwargs = engine_kwargs(identity, slots, capacity)
    names = tuple(name for name, _, _ in slots)
    publish_slot_names(names + (FREE_SLOT,) * max(0, capacity - len(names)))
    return kwargs


def _model_config(model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        from adapters.spec import AdapterFormatError

        raise AdapterFormatError(f"cannot read the model config of {model!r} to check the adapters "
                                 f"against it ({exc})") from None
