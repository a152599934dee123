"""The V1 logits processor that carries each request's steering to the model. It never changes logits.

vLLM calls `update_state(BatchUpdate)` inside `execute_model` before the forward, with the rows added to,
removed from and moved within the persistent batch; we mirror them into `STATE`'s row tables, which the
model turns into per-token buffers. `validate_params` runs in the front end at admission and raises
vLLM's VLLMValidationError (HTTP 400, `parameter` naming the field), so a malformed or unknown steering
request is refused, never served unsteered.

Per request, `SamplingParams.extra_args` (the OpenAI `vllm_xargs` field) may carry:
    fairsteer_adapter    str, the name of a loaded adapter
    fairsteer_strength   float ≥ 0; absent or 0 means unsteered
"""

import math

import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from server.vllm_plugin.state import STATE

PROCESSOR_FQCN = "server.vllm_plugin.processor:SteeringStateProcessor"
ADAPTER_KEY = "fairsteer_adapter"
STRENGTH_KEY = "fairsteer_strength"
FREE = ""  # the name of an empty adapter row: no request can ask for it
_KEYS = (ADAPTER_KEY, STRENGTH_KEY)

# Adapter names in index order (index = position + 1), known in the front-end process once
# `engine_kwargs` ran there; the engine process learns them from the model config (`STATE.adapter_names`).
_front_end_adapters: tuple[str, ...] | None = None


def set_front_end_adapters(names: tuple[str, ...]) -> None:
    global _front_end_adapters
    _front_end_adapters = tuple(names)


def _known_adapters() -> tuple[str, ...] | None:
    if _front_end_adapters is not None:
        return _front_end_adapters
    return getattr(STATE, "adapter_names", None)


class SteeringParamError(ValueError):
    """A malformed steering request; `field` names the offending extra_args key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_steering(extra_args: dict | None, names: tuple[str, ...] | None) -> tuple[float, int]:
    """(strength, adapter index) of one request; (0.0, 0) when unsteered. Raises SteeringParamError."""
    extra_args = extra_args or {}
    unknown = sorted(k for k in extra_args if k.startswith("fairsteer") and k not in _KEYS)
    if unknown:
        raise SteeringParamError(unknown[0],
                                 f"unknown steering field(s) {unknown}; the engine reads only {list(_KEYS)}")
    strength = extra_args.get(STRENGTH_KEY)
    adapter = extra_args.get(ADAPTER_KEY)
    if strength is None:
        strength = 0.0
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise SteeringParamError(STRENGTH_KEY,
                                 f"{STRENGTH_KEY} must be a number, got {strength!r}")
    strength = float(strength)
    if not math.isfinite(strength) or strength < 0:
        raise SteeringParamError(STRENGTH_KEY, f"{STRENGTH_KEY} must be finite and ≥ 0, got {strength!r}")
    if adapter is None:
        if strength != 0:
            message = f"{STRENGTH_KEY}={strength} needs {ADAPTER_KEY}, a loaded adapter's name"
            raise SteeringParamError(STRENGTH_KEY, message)
        return 0.0, 0
    if not isinstance(adapter, str) or not adapter:
        raise SteeringParamError(ADAPTER_KEY,
                                 f"{ADAPTER_KEY} must be a string naming a loaded adapter, got {adapter!r}")
    if names is None:
        raise SteeringParamError(ADAPTER_KEY, "this vLLM process does not know the fairsteer adapters: build "
                                              "the engine arguments with server.vllm_plugin.engine_kwargs()")
    if adapter not in names:
        loaded = ", ".join(names) if names else "none"
        raise SteeringParamError(ADAPTER_KEY,
                                 f"{ADAPTER_KEY}={adapter!r} is not a loaded adapter (loaded: {loaded})")
    if strength == 0:
        return 0.0, 0
    return strength, names.index(adapter) + 1


class SteeringStateProcessor(LogitsProcessor):
    """Mirrors per-request steering into per-row tables; logits pass through untouched."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            parse_steering(sampling_params.extra_args, _known_adapters())
        except SteeringParamError as exc:
            raise VLLMValidationError(str(exc), parameter=exc.field) from None

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        scheduler = vllm_config.scheduler_config
        STATE.allocate(scheduler.max_num_seqs, scheduler.max_num_batched_tokens, device)
        # A fresh persistent batch (vLLM may rebuild it) starts empty.
        STATE.row_strength_cpu.zero_()
        STATE.row_index_cpu.zero_()
        STATE.finish_update(0)

    def is_argmax_invariant(self) -> bool:
        return True  # lets vLLM skip `apply` for greedy batches

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        names = _known_adapters()
        # vLLM's documented order: removed, then added, then moved.
        for row in batch_update.removed:
            STATE.clear_row(row)
        for row, params, _, _ in batch_update.added:
            strength, index = parse_steering(params.extra_args, names)
            STATE.set_row(row, strength, index)
        for src, dst, direction in batch_update.moved:
            if direction == MoveDirectionality.SWAP:
                STATE.swap_rows(src, dst)
            else:
                STATE.move_row(src, dst)
        STATE.finish_update(batch_update.batch_size)
