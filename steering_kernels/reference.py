"""Reference semantics of the steering ops in plain PyTorch. Every backend must match these.

The op, for each token t with adapter k = index[t] (1-based; k <= 0 = no steering) and strength s = strength[t]:

    if k <= 0 or s == 0:   y[t] = h[t]                                   (bit-identical)
    else:                  y[t] = h[t] + s · (a[k-1] ⊙ h[t] + b[k-1])

Shapes: h (T, D) any float dtype; a, b (K, D) fp32 tables of K adapters for one site; strength (T,) fp32;
index (T,) int32, or None to steer every token with a[0], b[0] (the single-adapter form).
Math in fp32 (fp64 for fp64 inputs, so gradcheck works), cast back to h.dtype.
Untouched rows go through torch.where, not 0 · (...): 0 · inf is NaN.
Differentiable in a and b, so the trainer steers with this very function.

The fused op applies RMSNorm first, with vLLM's conventions:
    residual is None:  y = steer(rms_norm(x))
    otherwise:         r = x + residual;  y = steer(rms_norm(r));  returns (y, r)   (fused add + RMSNorm)
where rms_norm(x) = x / sqrt(mean(x²) + eps) · weight, computed in fp32 and rounded to x.dtype before
steering, so that strength 0 equals the plain norm's output exactly. The rounding follows vLLM's RMSNorm
(vllm.ir.ops.rms_norm, the CUDA kernel) and Hugging Face's LlamaRMSNorm: the normalised value is rounded to
weight.dtype, multiplied by the weight in that dtype, then cast to x.dtype. With bf16/fp16 weights this rounds
twice; rounding once after the weight would differ from the model's own norm in about a quarter of elements.
Negative indices are untouched (vLLM's LoRA kernels use -1 for "none"); an index above K is an error.
"""

import torch


def _math_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)                # fp32, or fp64 for fp64 inputs


def steer_ref(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor, strength: torch.Tensor,
              index: torch.Tensor | None = None) -> torch.Tensor:
    if index is None:
        rows_a, rows_b = a[0], b[0]                                   # (D,)
        active = strength != 0
    else:
        row = (index.long() - 1).clamp(min=0)
        rows_a, rows_b = a[row], b[row]                               # (T, D)
        active = (index > 0) & (strength != 0)
    h32 = h.to(_math_dtype(h))
    s = strength.to(h32.dtype).unsqueeze(-1)                          # (T, 1)
    steered = (h32 + s * (rows_a * h32 + rows_b)).to(h.dtype)
    return torch.where(active.unsqueeze(-1), steered, h)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(_math_dtype(x))
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (normed.to(weight.dtype) * weight).to(x.dtype)                 # vLLM's rounding, see docstring


def rms_norm_steer_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, a: torch.Tensor, b: torch.Tensor,
                       strength: torch.Tensor, index: torch.Tensor | None = None,
                       residual: torch.Tensor | None = None):
    if residual is None:
        return steer_ref(rms_norm_ref(x, weight, eps), a, b, strength, index)
    updated = (x.to(_math_dtype(x)) + residual.to(_math_dtype(x))).to(x.dtype)
    return steer_ref(rms_norm_ref(updated, weight, eps), a, b, strength, index), updated
