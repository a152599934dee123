"""One entry point per steering op; the backend is resolved once, callers never branch.

    steer(h, a, b, strength, index=None)                                   y = h + s ⊙ (a[k-1] ⊙ h + b[k-1])
    rms_norm_steer(x, weight, eps, a, b, strength, index=None, residual=None)   steer(rms_norm(x [+ residual]))

Semantics are those of reference.py. Backends:
  "triton"  CUDA tensors, when triton imports (the default on a machine with CUDA). Host-side shape checks
            only, so a call can be captured in a CUDA graph.
  "torch"   CPU: paths equal bit for bit to the reference. Below COMPILED_MIN_TOKENS tokens (decode steps) one
            pass of a small C++ loop (cpu_kernel.py, built on first use); where it cannot be built, in-place
            fp32 torch ops in the reference's order (one broadcast adapter row instead of a (T, D) gather,
            untouched rows skipped). From COMPILED_MIN_TOKENS fp32 tokens on, the reference compiled by Inductor
            into one loop. It reads index and strength values, which is free on CPU. CUDA tensors under "torch"
            use the branch-free reference, so forcing "torch" on a GPU stays graph-safe.
Override with FAIRSTEER_KERNEL=torch|triton (triton on CPU tensors then needs TRITON_INTERPRET=1), or in tests
with `use_backend(...)`. Outputs are always new tensors, never views of an input.
"""

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from steering_kernels import cpu_kernel
from steering_kernels.reference import _math_dtype, rms_norm_steer_ref, steer_ref

try:
    import triton  # noqa: F401  (only its presence matters here; the kernels are imported lazily)
    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

BACKENDS = ("torch", "triton")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _resolve(choice: str | None) -> str:
    if not choice:
        return "triton" if HAS_TRITON and torch.cuda.is_available() else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"FAIRSTEER_KERNEL={choice!r} is not a steering backend; use one of {BACKENDS} "
                         "or unset it to pick automatically")
    if choice == "triton" and not HAS_TRITON:
        raise RuntimeError("FAIRSTEER_KERNEL=triton but triton is not importable; `pip install triton` "
                           "or set FAIRSTEER_KERNEL=torch")
    return choice


BACKEND = _resolve(os.environ.get("FAIRSTEER_KERNEL"))
_state = {"backend": BACKEND, "forced": bool(os.environ.get("FAIRSTEER_KERNEL"))}


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend inside a `with` block (tests, benchmarks); restores the previous choice after."""
    previous = dict(_state)
    _state.update(backend=_resolve(name), forced=True)
    try:
        yield
    finally:
        _state.update(previous)


@functools.cache
def _triton_kernels():
    # Imported on first use: @triton.jit reads TRITON_INTERPRET when the module is imported.
    from steering_kernels import triton_kernels
    return triton_kernels


def _uses_triton(t: torch.Tensor) -> bool:
    if _state["backend"] != "triton" or t.dtype not in TRITON_DTYPES:
        return False                       # fp64 (gradcheck, tests) always takes the reference's path
    if t.is_cuda:
        return True
    if not _state["forced"]:
        return False                       # CPU tensors on a CUDA machine: the CPU path
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the triton steering backend was forced on CPU tensors; set TRITON_INTERPRET=1 "
                           "to run the kernels in Triton's interpreter, or use FAIRSTEER_KERNEL=torch")
    return True


def _check_steer_args(h, a, b, strength, index):
    """Shape/dtype checks on metadata only (no device reads), so they are graph-safe."""
    if h.dim() != 2 or not h.is_floating_point():
        raise ValueError(f"h must be a floating (tokens, hidden) tensor, got {tuple(h.shape)} {h.dtype}; "
                         "flatten batch dims with h.reshape(-1, h.shape[-1])")
    T, D = h.shape
    if a.dim() != 2 or a.shape != b.shape or a.shape[1] != D or a.shape[0] < 1:
        raise ValueError(f"adapter tables a, b must both be (K >= 1, hidden={D}); got a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}. Stack one row per adapter for this site")
    if tuple(strength.shape) != (T,) or not strength.is_floating_point():
        raise ValueError(f"strength must be a float tensor of shape ({T},), one value per token; got "
                         f"{tuple(strength.shape)} {strength.dtype}")
    if index is not None and (tuple(index.shape) != (T,) or index.is_floating_point() or index.is_complex()):
        raise ValueError(f"index must be an integer tensor of shape ({T},) (1-based adapter per token, "
                         f"0 = none) or None; got {tuple(index.shape)} {index.dtype}")
    tensors = [h, a, b, strength] + ([index] if index is not None else [])
    if len({t.device for t in tensors}) > 1:
        raise ValueError(f"steering tensors are on different devices: {[str(t.device) for t in tensors]}; "
                         "move the adapter tables and per-token buffers to h's device once, at load time")


@dataclass(frozen=True)
class RowPlan:
    """Which token rows a step steers and with which adapter row: the bookkeeping of the CPU path.

    It depends only on (strength, index), not on the site, so the vLLM plugin makes one per step with
    `plan_rows` and every site of that step reuses it (as vLLM's LoRA computes its punica metadata once).
    """

    num_tokens: int
    steered: torch.Tensor | None    # (n,) long rows to compute alone (n <= T/2); None: compute all rows
    untouched: torch.Tensor | None  # (T - n,) long rows left as they were when computing all; None: none
    adapter: int | torch.Tensor     # 0-based adapter row for all computed rows, or (rows,) long per row
    strength: torch.Tensor          # (rows, 1) strength of the computed rows
    num_steered: int
    max_index: int


def plan_rows(strength: torch.Tensor, index: torch.Tensor | None) -> RowPlan:
    """Plan the CPU path for per-token `strength` (T,) and 1-based `index` (T,) (or None = adapter 1)."""
    T = strength.shape[0]
    if index is None:
        active, lo, hi = strength != 0, 1, 1
    else:
        lo, hi = (int(v) for v in torch.aminmax(index)) if T else (0, 0)
        active = (index > 0) & (strength != 0)
    n = int(active.sum())
    single = index is None or lo == hi or bool(((index == hi) | (index <= 0)).all())
    steered = untouched = None
    if 0 < n and n * 2 <= T:                          # few steered tokens: compute those rows only
        steered = active.nonzero().squeeze(1)
    elif n < T:                                       # compute all rows, then keep these as they were
        untouched = (~active).nonzero().squeeze(1)
    if single:
        adapter = hi - 1
    else:
        rows = (index.long() - 1).clamp(min=0)
        adapter = rows if steered is None else rows[steered]
    computed = strength if steered is None else strength[steered]
    return RowPlan(T, steered, untouched, adapter, computed.unsqueeze(-1), n, hi)


def unsteered_plan(num_tokens: int) -> RowPlan:
    """The plan of a step that steers no token (what `plan_rows` gives for all-zero strengths), made for free."""
    return RowPlan(num_tokens, None, None, 0, _NO_ROWS, 0, 0)


_NO_ROWS = torch.empty(0, 1)


# From this many tokens on (prefill), the CPU path runs `steer_ref` compiled by Inductor: one fused loop instead of
# ~8 passes over a (T, D) tensor that no longer fits in cache (bench/README.md: T=800, D=576, 1.9 ms eager vs
# 0.42 ms compiled per site). Below it the compiled call's fixed cost (~28 us: guards, wrapper) loses. Same bits:
# Inductor keeps fp contraction off, so it rounds as the reference (tests/steering_kernels/test_dispatch.py).
COMPILED_MIN_TOKENS = 256


@functools.cache
def _compiled_steer_ref():
    return torch.compile(steer_ref, dynamic=True, fullgraph=True)


def _steer_cpu(h, a, b, strength, index, may_return_input=False, plan: RowPlan | None = None):
    """The reference's arithmetic, op for op, with the work cut down; see the module docstring."""
    plan = plan or plan_rows(strength, index)
    if plan.num_tokens != h.shape[0]:
        raise ValueError(f"the row plan covers {plan.num_tokens} tokens but h has {h.shape[0]}; make the plan "
                         "from this step's strength and index")
    if plan.max_index > a.shape[0]:
        raise ValueError(f"adapter index {plan.max_index} is out of range: this site has {a.shape[0]} "
                         f"adapters (valid 1..{a.shape[0]}, 0 = none)")
    if plan.num_steered == 0:
        return h if may_return_input else h.clone()
    # Decode sizes: one pass of the C++ loop instead of ~6 torch ops of ~2-3 us dispatch each (bench/README.md).
    kernel = cpu_kernel.load() if plan.num_tokens < COMPILED_MIN_TOKENS else None
    if kernel is not None:
        out = h if may_return_input else torch.empty_like(h)   # h is a temporary of ours: steer it in place
        if kernel.steer_into(out, h, a, b, strength, index):    # False: a layout it does not take (fp64, views)
            return out
    if plan.num_tokens >= COMPILED_MIN_TOKENS and h.dtype == torch.float32:
        return _compiled_steer_ref()(h, a, b, strength, index)
    if plan.steered is not None:
        steered = _steer_rows(h.index_select(0, plan.steered), a, b, plan.strength, plan.adapter)
        return h.clone().index_copy_(0, plan.steered, steered)
    return _steer_rows(h, a, b, plan.strength, plan.adapter, plan.untouched)


def _steer_rows(h, a, b, strength, adapter, untouched=None):
    """Steer every row of h with one adapter row (int) or a per-row adapter row ((T,) long), except the rows
    listed in `untouched` ((n,) long or None), which come out as h's own bits."""
    h32 = h.to(_math_dtype(h))
    if isinstance(adapter, int):                                          # one row, broadcast: no gather
        out = torch.mul(a[adapter], h32)
        out.add_(b[adapter])
    else:
        # index_select, not a[adapter]: advanced indexing costs about 2x more per call on CPU (bench/README.md).
        # The gathered rows are a fresh buffer, so the product is written into it instead of a new one.
        rows_a = torch.index_select(a, 0, adapter)                        # (T, D)
        out = rows_a.mul_(h32) if rows_a.dtype == h32.dtype else rows_a * h32
        out.add_(torch.index_select(b, 0, adapter))
    out.mul_(strength.to(h32.dtype))                                      # same op order as steer_ref
    if untouched is not None:
        # x + (-0.0) is x for every x (±0, ±inf, NaN too): one fill instead of gathering and copying h's rows back.
        out.index_fill_(0, untouched, -0.0)
    return out.add_(h32).to(h.dtype)


def _rms_norm_cpu(x, weight, eps):
    """rms_norm_ref with its fp32 temporaries reused; same ops, same order, same bits."""
    x32 = x.to(_math_dtype(x))
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if weight.dtype == normed.dtype:
        return normed.mul_(weight).to(x.dtype)
    return (normed.to(weight.dtype) * weight).to(x.dtype)


def steer(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor, strength: torch.Tensor,
          index: torch.Tensor | None = None, plan: RowPlan | None = None) -> torch.Tensor:
    """Apply steering adapters to token rows h.

    Args:
        h: (T, D) hidden states, fp32/bf16/fp16 (the output of a normalisation module).
        a, b: (K, D) fp32 tables, one row per adapter loaded for this site.
        strength: (T,) per-token strength ω; 0 leaves the row bit-identical.
        index: (T,) integer, 1-based adapter row per token (0 = none); None steers every token with row 1.
        plan: `plan_rows(strength, index)`, made once and shared by all sites of a step, which saves the
            CPU path's per-call bookkeeping; ignored by the Triton path.
    Returns:
        (T, D) tensor of h's dtype, never a view of h.
    """
    _check_steer_args(h, a, b, strength, index)
    if _uses_triton(h):
        return _triton_kernels().steer(h, a, b, strength, index)
    if h.device.type == "cpu":
        return _steer_cpu(h, a, b, strength, index, plan=plan)
    return steer_ref(h, a, b, strength, index)


def rms_norm_steer(x: torch.Tensor, weight: torch.Tensor, eps: float, a: torch.Tensor, b: torch.Tensor,
                   strength: torch.Tensor, index: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, plan: RowPlan | None = None):
    """RMSNorm (optionally after the residual add) then steering, in one pass on GPU.

    Args:
        x: (T, D) input; weight: (D,) norm weight; eps: the norm's epsilon.
        a, b, strength, index: as in `steer`.
        residual: (T, D) like x, or None. When given, returns (y, x + residual) as vLLM's fused
            add + RMSNorm does (the sum rounded to x.dtype is both the new residual and the norm's input).
        plan: as in `steer`.
    """
    _check_steer_args(x, a, b, strength, index)
    if tuple(weight.shape) != (x.shape[1],):
        raise ValueError(f"norm weight must have shape ({x.shape[1]},), got {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual must match x: {tuple(x.shape)} {x.dtype}; got "
                         f"{tuple(residual.shape)} {residual.dtype}")
    if _uses_triton(x):
        return _triton_kernels().rms_norm_steer(x, weight, eps, a, b, strength, index, residual)
    if x.device.type != "cpu":
        return rms_norm_steer_ref(x, weight, eps, a, b, strength, index, residual)
    if residual is None:
        return _steer_cpu(_rms_norm_cpu(x, weight, eps), a, b, strength, index, True, plan)
    updated = (x.to(_math_dtype(x)) + residual.to(_math_dtype(x))).to(x.dtype)
    return _steer_cpu(_rms_norm_cpu(updated, weight, eps), a, b, strength, index, True, plan), updated
