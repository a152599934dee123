"""Triton kernels for the steering ops; semantics are those of steering_kernels/reference.py.

    steer:           y[t] = h[t] + s[t] · (a[k-1] ⊙ h[t] + b[k-1])      k = index[t]; k <= 0 or s == 0: y = h
    rms_norm_steer:  (r = x + residual, rounded to x.dtype)  y = steer(rms_norm(r))

One program handles a tile of BLOCK_T token rows × BLOCK_D hidden columns; a row's reduction order depends only
on the hidden size, so a token's output does not depend on what else is in the batch (batched == solo).
Math is fp32; untouched rows are selected with tl.where after the cast, so they are the input bit for bit.
Launchers do host-side shape work only (no .item(), no branching on device values): CUDA-graph capturable.
An index outside 1..K leaves the row untouched here (a device-side check would need a sync); the CPU path
raises for it instead. FP contraction is disabled so fp32 steering rounds exactly as the reference does.

Run under TRITON_INTERPRET=1 to execute on CPU tensors (tests do); this module must be imported after that
variable is set, because @triton.jit reads it at decoration time (dispatch.py imports it lazily).
"""

import torch
import triton
import triton.language as tl

MAX_BLOCK_D = 8192        # widest tile kept in registers; wider rows loop over column chunks
TILE_ELEMENTS = 4096      # rows per program = TILE_ELEMENTS // BLOCK_D, so narrow rows still fill a tile


@triton.jit
def _adapter_rows(s_ptr, idx_ptr, rows, rmask, K, HAS_INDEX: tl.constexpr):
    """Per-row strength (fp32), 0-based table row, and whether the row is steered."""
    s = tl.load(s_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    if HAS_INDEX:
        k = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int32)
        active = (s != 0.0) & (k > 0) & (k <= K)
        tab = tl.where(active, k - 1, 0)
    else:
        active = s != 0.0
        tab = tl.zeros_like(rows)
    return s, tab, active


@triton.jit
def _steer_tile(h, a_ptr, b_ptr, s, tab, active, cols, mask, D):
    """Steer a (BLOCK_T, BLOCK_D) tile h of the input dtype; inactive rows come back unchanged."""
    tmask = mask & active[:, None]                                 # tables are read for steered rows only
    toff = tab.to(tl.int64)[:, None] * D + cols[None, :]
    a = tl.load(a_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
    h32 = h.to(tl.float32)
    steered = (h32 + s[:, None] * (a * h32 + b)).to(h.dtype)
    return tl.where(active[:, None], steered, h)


@triton.jit(do_not_specialize=["T"])
def _steer_kernel(h_ptr, out_ptr, a_ptr, b_ptr, s_ptr, idx_ptr, T, D, K, stride_h, stride_out,
                  HAS_INDEX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < T
    s, tab, active = _adapter_rows(s_ptr, idx_ptr, rows, rmask, K, HAS_INDEX)
    rows64 = rows.to(tl.int64)[:, None]
    for off in range(0, D, BLOCK_D):
        cols = off + tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        h = tl.load(h_ptr + rows64 * stride_h + cols[None, :], mask=mask, other=0.0)
        y = _steer_tile(h, a_ptr, b_ptr, s, tab, active, cols, mask, D)
        tl.store(out_ptr + rows64 * stride_out + cols[None, :], y, mask=mask)


@triton.jit
def _norm_input(x_ptr, res_ptr, res_out_ptr, rows64, cols, mask, stride_x, stride_res, stride_res_out,
                HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr):
    """The tile to normalise, in x's dtype: x, or x + residual rounded to x.dtype (stored when asked)."""
    x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + rows64 * stride_res + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        if STORE_RESIDUAL:
            tl.store(res_out_ptr + rows64 * stride_res_out + cols[None, :], x, mask=mask)
    return x


@triton.jit
def _norm_steer_store(z, rstd, w_ptr, out_ptr, a_ptr, b_ptr, s, tab, active, rows64, cols, mask, D,
                      stride_out, STEER: tl.constexpr):
    """Normalise tile z with per-row rstd, apply the weight with vLLM's rounding, steer, store."""
    w = tl.load(w_ptr + cols, mask=cols < D, other=0.0)
    normed = (z.to(tl.float32) * rstd[:, None]).to(w.dtype)       # rounded to weight dtype, as vLLM does
    y = (normed.to(tl.float32) * w.to(tl.float32)[None, :]).to(w.dtype).to(z.dtype)
    if STEER:
        y = _steer_tile(y, a_ptr, b_ptr, s, tab, active, cols, mask, D)
    tl.store(out_ptr + rows64 * stride_out + cols[None, :], y, mask=mask)


@triton.jit(do_not_specialize=["T"])
def _rms_norm_steer_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, a_ptr, b_ptr, s_ptr, idx_ptr,
                           T, D, K, eps, stride_x, stride_res, stride_out, stride_res_out,
                           HAS_RESIDUAL: tl.constexpr, HAS_INDEX: tl.constexpr, STEER: tl.constexpr,
                           SINGLE_TILE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < T
    rows64 = rows.to(tl.int64)[:, None]
    if STEER:
        s, tab, active = _adapter_rows(s_ptr, idx_ptr, rows, rmask, K, HAS_INDEX)
    else:
        s, tab, active = tl.zeros_like(rows).to(tl.float32), rows, rows < 0
    if SINGLE_TILE:                                                # the whole row stays in registers
        cols = tl.arange(0, BLOCK_D)
        mask = rmask[:, None] & (cols < D)[None, :]
        z = _norm_input(x_ptr, res_ptr, res_out_ptr, rows64, cols, mask, stride_x, stride_res,
                        stride_res_out, HAS_RESIDUAL, True)
        z32 = z.to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(z32 * z32, axis=1) / D + eps)
        _norm_steer_store(z, rstd, w_ptr, out_ptr, a_ptr, b_ptr, s, tab, active, rows64, cols, mask, D,
                          stride_out, STEER)
    else:                                                          # two passes; the second recomputes x + r
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for off in range(0, D, BLOCK_D):
            cols = off + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (cols < D)[None, :]
            z32 = _norm_input(x_ptr, res_ptr, res_out_ptr, rows64, cols, mask, stride_x, stride_res,
                              stride_res_out, HAS_RESIDUAL, True).to(tl.float32)
            acc += tl.sum(z32 * z32, axis=1)
        rstd = tl.math.rsqrt(acc / D + eps)
        for off in range(0, D, BLOCK_D):
            cols = off + tl.arange(0, BLOCK_D)
            mask = rmask[:, None] & (cols < D)[None, :]
            z = _norm_input(x_ptr, res_ptr, res_out_ptr, rows64, cols, mask, stride_x, stride_res,
                            stride_res_out, HAS_RESIDUAL, False)
            _norm_steer_store(z, rstd, w_ptr, out_ptr, a_ptr, b_ptr, s, tab, active, rows64, cols, mask, D,
                              stride_out, STEER)


def _launch_shape(T: int, D: int, max_block_d: int, block_t: int | None, num_warps: int | None):
    block_d = min(triton.next_power_of_2(D), max_block_d)
    if block_t is None:
        block_t = max(1, TILE_ELEMENTS // block_d)
    if num_warps is None:
        num_warps = min(16, max(4, block_t * block_d // 512))     # about 16 elements per thread
    return block_d, block_t, num_warps, (triton.cdiv(T, block_t),)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def steer(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor, strength: torch.Tensor,
          index: torch.Tensor | None = None, *, max_block_d: int = MAX_BLOCK_D,
          block_t: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Triton launcher of the steering op. h (T, D); a, b (K, D); strength (T,); index (T,) or None.

    Shapes are checked by dispatch.py; max_block_d, block_t and num_warps exist for tests and tuning.
    """
    h = _rows(h)
    T, D = h.shape
    out = torch.empty_like(h)
    if T == 0:
        return out
    a, b = a.contiguous(), b.contiguous()
    block_d, block_t, num_warps, grid = _launch_shape(T, D, max_block_d, block_t, num_warps)
    _steer_kernel[grid](h, out, a, b, strength, strength if index is None else index, T, D, a.shape[0],
                        h.stride(0), out.stride(0), HAS_INDEX=index is not None, BLOCK_T=block_t,
                        BLOCK_D=block_d, num_warps=num_warps, enable_fp_fusion=False)
    return out


def rms_norm_steer(x: torch.Tensor, weight: torch.Tensor, eps: float, a: torch.Tensor | None,
                   b: torch.Tensor | None, strength: torch.Tensor | None, index: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, *, max_block_d: int = MAX_BLOCK_D,
                   block_t: int | None = None, num_warps: int | None = None):
    """Fused (residual add +) RMSNorm + steering; a=None gives the plain norm (same rounding, no steering).

    Returns y, or (y, updated_residual) when residual is given, as vLLM's fused add + RMSNorm does.
    """
    x = _rows(x)
    T, D = x.shape
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else out
    if T > 0:
        steer_on = a is not None
        if steer_on:
            a, b = a.contiguous(), b.contiguous()
        res = _rows(residual) if residual is not None else x
        tables = (a, b) if steer_on else (weight, weight)          # unused pointers when STEER is off
        s = strength if steer_on else weight
        block_d, block_t, num_warps, grid = _launch_shape(T, D, max_block_d, block_t, num_warps)
        _rms_norm_steer_kernel[grid](
            x, res, weight.contiguous(), out, res_out, tables[0], tables[1], s,
            index if index is not None else s, T, D, a.shape[0] if steer_on else 1, float(eps),
            x.stride(0), res.stride(0), out.stride(0), res_out.stride(0),
            HAS_RESIDUAL=residual is not None, HAS_INDEX=index is not None, STEER=steer_on,
            SINGLE_TILE=block_d >= D, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=num_warps,
            enable_fp_fusion=False)
    return (out, res_out) if residual is not None else out
