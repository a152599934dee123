"""The steering op y = h + s ⊙ (a ⊙ h + b) with per-token strength, and its fused RMSNorm variant.

Call `steer` / `rms_norm_steer`; the backend (Triton on CUDA, a torch path on CPU) is resolved once in
dispatch.py. `BACKEND` is that resolved default; `HAS_TRITON` says whether triton imports; `load_cpu_kernel()`
builds (or loads) the one-pass CPU op ahead of the first steered step and returns None where it cannot.
The semantics are defined by reference.py (`steer_ref`, `rms_norm_steer_ref`), which the trainer also uses
directly.
"""

from steering_kernels.cpu_kernel import load as load_cpu_kernel
from steering_kernels.dispatch import (
           BACKEND,
           HAS_TRITON,
           RowPlan,
           plan_rows,
           rms_norm_steer,
           steer,
           unsteered_plan,
           use_backend,
)
from steering_kernels.reference import rms_norm_ref, rms_norm_steer_ref, steer_ref

__all__ = ["BACKEND", "HAS_TRITON", "RowPlan", "load_cpu_kernel", "plan_rows", "rms_norm_ref", "rms_norm_steer", "rms_norm_steer_ref",
           "steer", "steer_ref", "unsteered_plan",
           "use_backend"]
