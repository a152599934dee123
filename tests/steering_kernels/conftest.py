"""Shared set-up for the steering-op tests: Triton runs in its interpreter when there is no GPU.

TRITON_INTERPRET must be set before steering_kernels.triton_kernels is imported (@triton.jit reads it at
decoration time); dispatch.py imports that module lazily, so setting it here is early enough.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
