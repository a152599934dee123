"""The steering op as a registered torch custom op, so torch.compile treats it as opaque.

    torch.ops.fairsteer.steer(h, a, b) -> y
        y[t] = h[t] + s[t] · (a[k-1] ⊙ h[t] + b[k-1])   with k = index[t] ≥ 1 and s = strength[t] ≠ 0
        y[t] = h[t]                                       otherwise (bit-identical)

    torch.ops.fairsteer.rms_norm_steer(x, residual, weight, eps, a, b) -> (y, x + residual)
        the fused residual add → RMSNorm → steer of `steering_kernels.rms_norm_steer` (used on CUDA)

h, x: (T, D); a, b: (K, D) fp32 tables of one site. The per-token strength s and adapter index k are NOT
arguments: they are read inside the op from `STATE`'s fixed buffers, refilled before each step. A traced
graph therefore never freezes one request's values; it only records "call fairsteer.steer here".
"""

import torch
from torch.library import Library

from server.vllm_plugin.state import STATE
from steering_kernels import rms_norm_steer as _rms_norm_steer
from steering_kernels import steer as _steer

# Defined once per process at import (plugins may be loaded several times; modules are imported once).
_LIB = Library("fairsteer", "DEF")


def _token_state(num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    return STATE.strength[:num_tokens], STATE.index[:num_tokens]


def _skip() -> bool:
    # On CPU nothing is captured, so a step without any steered request can skip the arithmetic. Under
    # CUDA graphs the op must run unconditionally (index 0 is the no-op), or capture would freeze the branch.
    return not STATE.ready or (not STATE.any_steered and STATE.device.type == "cpu")


def steer(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _skip():
        return h.clone()
    strength, index = _token_state(h.shape[0])
    return _steer(h, a, b, strength, index, plan=STATE.plan)


def steer_fake(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(h)


def rms_norm_steer(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                   a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    strength, index = _token_state(x.shape[0])
    return _rms_norm_steer(x, weight, eps, a, b, strength, index, residual=residual, plan=STATE.plan)


def rms_norm_steer_fake(x, residual, weight, eps, a, b):
    return torch.empty_like(x), torch.empty_like(x)


def _register() -> None:
    from vllm.utils.torch_utils import direct_register_custom_op

    direct_register_custom_op("steer", steer, fake_impl=steer_fake, target_lib=_LIB)
    direct_register_custom_op("rms_norm_steer", rms_norm_steer, fake_impl=rms_norm_steer_fake,
                              target_lib=_LIB)


_register()
