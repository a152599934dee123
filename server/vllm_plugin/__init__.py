"""fairsteer's vLLM plugin: per-request steering strength and adapter inside the vLLM engine.

How the pieces meet (see DESIGN.md, "vLLM on this machine"):
    register()        the `vllm.general_plugins` entry point, run by vLLM in every process: registers the
                      steered architectures (`Fairsteer<Arch>`, models.py) with vLLM's ModelRegistry
    engine_kwargs()   run once in the front-end process: validates the adapter files, checks the plugin
                      will load, and returns the engine arguments that select the steered architecture,
                      carry the adapter table into the engine and install the state-tracking processor
    processor.py      validates and tracks each request's `extra_args` (fairsteer_adapter/_strength)
    state.py, ops.py  the fixed per-row/per-token buffers and the registered custom op

Usage (offline):
    kwargs = engine_kwargs("path/to/model", {"fair": "fair.safetensors"})   # also sets ENV in os.environ
    llm = LLM(model="path/to/model", **kwargs, ...)
    llm.generate(prompt, SamplingParams(extra_args={"fairsteer_adapter": "fair", "fairsteer_strength": 0.5},
                                        cache_salt=...))  # prefix caching: salt per steering setting
"""

import json
import os
import re
from importlib.metadata import entry_points
from pathlib import Path

from server.vllm_plugin.processor import ADAPTER_KEY, PROCESSOR_FQCN, STRENGTH_KEY, set_front_end_adapters

__all__ = [
    "ADAPTER_KEY",
    "ENV",
    "PROCESSOR_FQCN",
    "STRENGTH_KEY",
    "SUPPORTED_ARCHITECTURES",
    "PluginError",
    "engine_kwargs",
    "register",
    "steered_architecture",
]

# Set in os.environ by `engine_kwargs` (spawned engine processes inherit it). Model Runner V2, the GPU
# default of vLLM 0.32, rejects V1 logits processors; the V1 runner is the one this plugin drives.
ENV: dict[str, str] = {"VLLM_USE_V2_MODEL_RUNNER": "0"}

ENTRY_POINT = "fairsteer"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PluginError(RuntimeError):
    """The plugin would not be active in the engine: serving would silently drop steering."""


def steered_architecture(base: str) -> str:
    return f"Fairsteer{base}"


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


def _model_config(model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        from adapters.spec import AdapterFormatError

        raise AdapterFormatError(f"cannot read the model config of {model!r} to check the adapters "
                                 f"against it ({exc})") from None


def engine_kwargs(model: str, adapters: dict[str, str], slot_capacity: int = 0) -> dict:
    """Validate `adapters` against `model` and return the vLLM engine arguments that enable steering.

    Args:
        model: the model folder or name, as given to vLLM.
        adapters: adapter name -> file. Order fixes the adapter indices (1, 2, ...). May be empty: the
            processor is still installed, so any steering request is refused rather than ignored.
        slot_capacity: for adapters at run time (`server.vllm_plugin.reload`): every site gets this many
            adapter rows when the model is built, before any graph is compiled or captured, so loading
            later only writes rows in place. 0: only the sites and rows of `adapters`.

    Returns:
        {"hf_overrides": ..., "logits_processors": [...]} to merge into the engine arguments. Also
        applies `ENV` to os.environ. Raises AdapterFormatError for a bad adapter or name, and
        PluginError when the plugin would not be active in the engine.
    """
    from adapters import io
    from adapters.spec import AdapterFormatError, ModelIdentity

    config = _model_config(model)
    identity = ModelIdentity.from_config(config)
    table = []
    for name, path in adapters.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise AdapterFormatError(f"adapter name {name!r} is not usable: use 1-64 letters, digits, '.', "
                                     "'_' or '-', starting with a letter or digit")
        path = str(Path(path).resolve())
        try:
            io.load(path, identity)
        except AdapterFormatError as exc:
            raise AdapterFormatError(f"adapter {name!r}: {exc}") from None
        table.append([name, path])

    kwargs: dict = {"logits_processors": [PROCESSOR_FQCN]}
    if identity.architecture in SUPPORTED_ARCHITECTURES:
        steered = steered_architecture(identity.architecture)
        check_plugin_active(steered)
        kwargs["hf_overrides"] = {"architectures": [steered], "fairsteer_adapters": json.dumps(table),
                                  "fairsteer_base_architecture": identity.architecture}
        if slot_capacity:
            if slot_capacity < len(table):
                raise AdapterFormatError(f"slot capacity {slot_capacity} is below the {len(table)} adapters given")
            kwargs["hf_overrides"]["fairsteer_slot_capacity"] = slot_capacity
    elif table:
        raise AdapterFormatError(f"fairsteer cannot steer {identity.architecture} models in vLLM "
                                 f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); serve without adapters")
    os.environ.update(ENV)
    set_front_end_adapters(tuple(name for name, _ in table))
    return kwargs
