"""The CPU steering op in one pass over (T, D): a small C++ loop built on first use with torch's JIT extensions.

    kernel = cpu_kernel.load()        # the built module, or None when it cannot be built (one warning says why)
    done = kernel.steer_into(out, h, a, b, strength, index)   # index: (T,) int32/int64, or None = adapter 1
                                                              # for all; False: a layout it does not take

For each token row t, with k = index[t] (1-based; k <= 0 = none) and s = strength[t]:
    k <= 0 or s == 0:  out[t] = h[t]  (h's bits; nothing is written when out is h)
    otherwise:         out[t] = h[t] + s * (a[k-1] * h[t] + b[k-1])
in fp32, rounded in steer_ref's order (t1 = a*h, t2 = t1 + b, t3 = s*t2, y = h + t3), then cast to h's dtype.
Built with -O3 and -ffp-contract=off: no FMA contraction and no fast-math, so every step rounds as torch's
separate ops do and the result is steer_ref's bit for bit (tests/steering_kernels/test_cpu_kernel.py); the
compiler still vectorises the loop. The torch ops it replaces cost ~2-3 us of dispatch each at decode sizes,
where the data of one site (T=32, D=576: 74 KB) sits in cache and one pass over it is ~1 us (bench/README.md).

What it takes: CPU tensors, h contiguous fp32/bf16/fp16, a and b contiguous fp32 (K, D), strength contiguous
fp32 (T,), out like h (h itself for in place). Anything else returns False without writing (fp64, views: the
caller runs the torch ops). The loop checks the index range, so a bad index cannot read outside the tables.

The build (~15 s here, once per machine and version) goes to torch's extensions folder (TORCH_EXTENSIONS_DIR,
default ~/.cache/torch_extensions), in a folder named after the hash of the source, the flags and torch's
version; torch's file lock there lets several processes start at once: one builds, the others wait and load it.
A lock left by a build that was killed is removed after STALE_LOCK_S.
"""

import functools
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Optional.h>
#include <torch/csrc/utils/pybind.h>

namespace {

inline float widen(float x) { return x; }
inline float widen(c10::BFloat16 x) { return static_cast<float>(x); }
inline float widen(c10::Half x) { return static_cast<float>(x); }

template <typename T> T narrow(float y);
template <> inline float narrow<float>(float y) { return y; }
// Round to nearest even as c10 does, but NaN -> 0xFFFF: torch's vectorised fp32 -> bf16 cast (the one steer_ref's
// .to() runs on a contiguous tensor) writes that, where c10's scalar conversion writes 0x7FC0.
template <> inline c10::BFloat16 narrow<c10::BFloat16>(float y) {
  uint32_t u;
  std::memcpy(&u, &y, sizeof(u));
  uint16_t bits = std::isnan(y) ? uint16_t(0xFFFF) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return c10::BFloat16(bits, c10::BFloat16::from_bits());
}
template <> inline c10::Half narrow<c10::Half>(float y) { return c10::Half(y); }

template <typename T, typename I>
void steer_rows(T* out, const T* h, const float* a, const float* b, const float* strength, const I* index,
                int64_t tokens, int64_t hidden, int64_t adapters) {
  for (int64_t t = 0; t < tokens; ++t) {
    const T* row = h + t * hidden;
    T* dst = out + t * hidden;
    const int64_t k = index ? static_cast<int64_t>(index[t]) : 1;
    const float s = strength[t];
    if (k <= 0 || s == 0.0f) {
      if (dst != row) std::memcpy(dst, row, hidden * sizeof(T));
      continue;
    }
    TORCH_CHECK(k <= adapters, "adapter index ", k, " is out of range: this site has ", adapters, " adapters");
    const float* ak = a + (k - 1) * hidden;
    const float* bk = b + (k - 1) * hidden;
    for (int64_t d = 0; d < hidden; ++d) {
      const float x = widen(row[d]);
      const float t1 = ak[d] * x;
      const float t2 = t1 + bk[d];
      const float t3 = s * t2;
      dst[d] = narrow<T>(x + t3);
    }
  }
}

template <typename T>
void dispatch_index(at::Tensor& out, const at::Tensor& h, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& strength, const c10::optional<at::Tensor>& index) {
  const int64_t tokens = h.size(0), hidden = h.size(1), adapters = a.size(0);
  T* o = out.data_ptr<T>();
  const T* x = h.data_ptr<T>();
  const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>(), *ps = strength.data_ptr<float>();
  if (!index.has_value()) {
    steer_rows<T, int32_t>(o, x, pa, pb, ps, nullptr, tokens, hidden, adapters);
  } else if (index->scalar_type() == at::kInt) {
    steer_rows(o, x, pa, pb, ps, index->data_ptr<int32_t>(), tokens, hidden, adapters);
  } else {
    steer_rows(o, x, pa, pb, ps, index->data_ptr<int64_t>(), tokens, hidden, adapters);
  }
}

// Returns false, writing nothing, for layouts and dtypes the loop does not take (the caller then runs the torch
// ops): checking here costs far less than the same checks in Python (bench/README.md).
bool steer_into(at::Tensor out, const at::Tensor& h, const at::Tensor& a, const at::Tensor& b,
                const at::Tensor& strength, const c10::optional<at::Tensor>& index) {
  const auto dtype = h.scalar_type();
  const bool fits = h.is_cpu() && h.dim() == 2 && h.is_contiguous() && out.is_contiguous()
      && out.sizes() == h.sizes() && out.scalar_type() == dtype
      && (dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf)
      && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && a.is_contiguous() && b.is_contiguous()
      && a.dim() == 2 && a.sizes() == b.sizes() && a.size(1) == h.size(1)
      && strength.scalar_type() == at::kFloat && strength.is_contiguous() && strength.numel() == h.size(0)
      && (!index.has_value() || (index->is_contiguous() && index->numel() == h.size(0)
                                 && (index->scalar_type() == at::kInt || index->scalar_type() == at::kLong)));
  if (!fits) return false;
  if (dtype == at::kFloat) dispatch_index<float>(out, h, a, b, strength, index);
  else if (dtype == at::kBFloat16) dispatch_index<c10::BFloat16>(out, h, a, b, strength, index);
  else dispatch_index<c10::Half>(out, h, a, b, strength, index);
  return true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("steer_into", &steer_into, "out[t] = h[t] + s[t] * (a[k-1] * h[t] + b[k-1]), or h[t] where unsteered; "
        "false (nothing written) for layouts it does not take");
}
"""

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# torch's build lock is a file that the builder removes; a builder killed mid-build leaves it, and every later
# process would wait on it forever. A build takes ~15 s here (a minute on a loaded machine).
STALE_LOCK_S = 600
# Strict IEEE rounding of every step (see the module docstring); -O3 vectorises the loop.
CFLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]


@functools.cache
def load():
    """The built extension module, or None (with one warning naming the reason) when it cannot be built."""
    from torch.utils.cpp_extension import get_default_build_root, is_ninja_available, load_inline

    compiler = os.environ.get("CXX", "c++")            # what torch's JIT build runs
    if shutil.which(compiler) is None:
        reason = f"no C++ compiler: {compiler!r} is not on PATH; install g++ or set CXX"
    elif not is_ninja_available():
        reason = "ninja is not installed; `pip install ninja`"
    else:
        # One folder per source, flags, torch and Python version: a module built for another libtorch never loads.
        digest = hashlib.sha256(f"{SOURCE} {CFLAGS} {torch.__version__} {sys.implementation.cache_tag}".encode())
        name = f"fairsteer_steer_cpu_{digest.hexdigest()[:12]}"
        try:
            folder = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name
            folder.mkdir(parents=True, exist_ok=True)
            _remove_stale_lock(folder / "lock")
            return load_inline(name=name, cpp_sources=[SOURCE], extra_cflags=CFLAGS, build_directory=str(folder),
                               no_implicit_headers=True, with_cuda=False)
        except (RuntimeError, OSError, ImportError) as error:   # a compile or link error, an unwritable cache
            lines = str(error).strip().splitlines() or [type(error).__name__]
            reason = "; ".join([line.strip() for line in lines if ": error:" in line][:2] or lines[:1])
    logger.warning("fairsteer: the one-pass CPU steering op could not be built (%s); CPU steering uses the torch "
                   "ops instead (same bits, slower at decode sizes)", reason)
    return None


def _remove_stale_lock(lock: Path) -> None:
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        logger.warning("fairsteer: removing %s, left %.0f s ago by a build that did not finish", lock, age)
        lock.unlink(missing_ok=True)
