"""What the HTTP side and the vLLM plugin must agree on, written once. No vLLM import here.

    request -> HTTP side (protocol.py: public fields, validated)  ->  SamplingParams.extra_args
            -> engine plugin (vllm_plugin/processor.py: internal keys, validated again at admission)

Public request fields are `fairness_strength` and `steering`; the engine reads only the internal
`extra_args` keys below, which the HTTP side writes and a client may never send. Adapter tables travel
into the engine as `hf_overrides` attributes of the model config. Both sides validate a strength with
`strength_problem`, so the two can never disagree on what a valid strength is.
"""

import math
import re
from typing import Any

from adapters.sites import SITE_MAPS

# Public fields of a completion request.
STRENGTH_FIELD = "fairness_strength"
ADAPTER_FIELD = "steering"

# SamplingParams.extra_args keys the engine plugin reads.
INTERNAL_ADAPTER_KEY = "fairsteer_adapter"
INTERNAL_STRENGTH_KEY = "fairsteer_strength"
INTERNAL_KEYS = (INTERNAL_ADAPTER_KEY, INTERNAL_STRENGTH_KEY)

# Model-config attributes (vLLM's hf_overrides) that carry the steering set-up into the engine.
ADAPTERS_KEY = "fairsteer_adapters"             # JSON [[slot name, file, version], ...]; index = position + 1
BASE_ARCH_KEY = "fairsteer_base_architecture"   # the architecture the steered class wraps
CAPACITY_KEY = "fairsteer_slot_capacity"        # adapter rows at every site (run-time loading), or absent

# Every architecture with a site map has a steered vLLM class (server/vllm_plugin/models.py).
SUPPORTED_ARCHITECTURES = tuple(SITE_MAPS)

# The slot name of an empty adapter row: no request can name it.
FREE_SLOT = ""

# Set in os.environ before the engine starts (spawned engine processes inherit it). Model Runner V2, the
# GPU default of vLLM 0.32, rejects V1 logits processors; the V1 runner is the one the plugin drives.
ENGINE_ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0"}

# Names travel in `x-fairsteer-adapter` headers and metric labels: short, printable, no spaces.
_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def steered_architecture(base: str) -> str:
    """The name the plugin registers the steered variant of `base` under."""
    return f"Fairsteer{base}"


def adapter_name_problem(name: Any) -> str | None:
    """Why `name` cannot name an adapter, or None if it can."""
    if isinstance(name, str) and _ADAPTER_NAME.fullmatch(name):
        return None
    return (f"adapter name {name!r} is not usable: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit")


def slot_name(name: str, version: str) -> str:
    """The engine's name for one version of an adapter: a replace gets a new slot, never a rewrite."""
    return f"{name}@{version}"


def strength_problem(value: Any, field: str, maximum: float | None = None) -> str | None:
    """Why `value` is not a usable strength for `field`, or None. `maximum` None: no upper bound."""
    bound = f"between 0 and {maximum}" if maximum is not None else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{field} must be a number {bound}, not {json_type(value)} ({value!r})"
    strength = float(value)
    if not math.isfinite(strength):
        return f"{field} must be a finite number; got {value!r}"
    if strength < 0:
        return f"{field} must be >= 0 (0 serves the base model); got {strength}"
    if maximum is not None and strength > maximum:
        return f"{field} {strength} is above this server's maximum {maximum} (set by --max-fairness-strength)"
    return None


def json_type(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), "a number")
