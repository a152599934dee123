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

import torch
from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from server.engine_boundary import (
    INTERNAL_ADAPTER_KEY,
    INTERNAL_KEYS,
    INTERNAL_STRENGTH_KEY,
    strength_problem,
)
from server.vllm_plugin.state import STATE

PROCESSOR_FQCN = "server.vllm_plugin.processor:SteeringStateProcessor"

# The front end's copy of the engine's slot names, in index order (index = position + 1). vLLM calls
# `validate_params` as a classmethod in the front-end process, which has no other way to see them; the
# engine process knows them from the model config (`STATE.adapter_names`). Written only through
# `publish_slot_names`, by whoever owns the slots in that process (server.admin.AdapterSlots when serving).
_front_end_slots: tuple[str, ...] | None = None


def publish_slot_names(names: tuple[str, ...]) -> None:
    global _front_end_slots
    _front_end_slots = tuple(names)


def _known_slots() -> tuple[str, ...] | None:
    if _front_end_slots is not None:
        return _front_end_slots
    return getattr(STATE, "adapter_names", None)


class SteeringParamError(ValueError):
    """A malformed steering request; `field` names the offending extra_args key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_steering(extra_args: dict | None, names: tuple[str, ...] | None) -> tuple[float, int]:
    """(strength, adapter index) of one request; (0.0, 0) when unsteered. Raises SteeringParamError."""
    extra_args = extra_args or {}
    unknown = sorted(k for k in extra_args if k.startswith("fairsteer") and k not in INTERNAL_KEYS)
    if unknown:
        raise SteeringParamError(unknown[0], f"unknown steering field(s) {unknown}; the engine reads only "
                                             f"{list(INTERNAL_KEYS)}")
    strength = extra_args.get(INTERNAL_STRENGTH_KEY)
    if strength is None:  # absent: unsteered
        strength = 0.0
    if problem := strength_problem(strength, INTERNAL_STRENGTH_KEY):
        raise SteeringParamError(INTERNAL_STRENGTH_KEY, problem)
    strength = float(strength)
    adapter = extra_args.get(INTERNAL_ADAPTER_KEY)
    if adapter is None:
        if strength != 0:
            message = f"{INTERNAL_STRENGTH_KEY}={strength} needs {INTERNAL_ADAPTER_KEY}, a loaded adapter's name"
            raise SteeringParamError(INTERNAL_STRENGTH_KEY, message)
        return 0.0, 0
    if not isinstance(adapter, str) or not adapter:
        raise SteeringParamError(INTERNAL_ADAPTER_KEY,
                                 f"{INTERNAL_ADAPTER_KEY} must be a string naming a loaded adapter, got {adapter!r}")
    if names is None:
        raise SteeringParamError(INTERNAL_ADAPTER_KEY, "this vLLM process does not know the fairsteer adapters: build "
                                              "the engine arguments with server.vllm_plugin."
                                              "offline_engine_kwargs()")
    if adapter not in names:
        loaded = ", ".join(names) if names else "none"
        raise SteeringParamError(INTERNAL_ADAPTER_KEY,
                                 f"{INTERNAL_ADAPTER_KEY}={adapter!r} is not a loaded adapter (loaded: {loaded})")
    if strength == 0:
        return 0.0, 0
    return strength, names.index(adapter) + 1


class SteeringStateProcessor(LogitsProcessor):
    """Mirrors per-request steering into per-row tables; logits pass through untouched."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        try:
            parse_steering(sampling_params.extra_args, _known_slots())
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
        names = _known_slots()
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
