#!/usr/bin/env bash
# The one prepared GPU run of issues 7 and 18 (330 s for parts a+b+d: 250 for a+b, 75 for d).
#   (a) Triton kernels vs the PyTorch reference, CUDA-graph capture;  (b) fused vs unfused vs copy bandwidth
#   (c) vLLM on the GPU: HOOK below, filled in by the serving engineer.
#   (d) training smoke (bench/train_throughput.py --smoke): a tiny random model built on the GPU in bf16,
#       a few DSO steps, checkpoint and resume against an uninterrupted run, the adapter's format, the
#       memory estimate against torch.cuda.max_memory_allocated on an 8B-shaped model, the adapter's
#       master copy on the CPU while the model is on the GPU.
# Usage (repo root or anywhere):  bench/gpu_check.sh [--cpu-smoke]
# Writes $OUT/gpu_check.log (everything), $OUT/summary.md (tables), $OUT/results.json. Exit 1 on a failure.
# Needs torch + triton (the GPU machine has both); the repo goes on PYTHONPATH, nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "== fairsteer gpu_check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') =="
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 250 "$PYTHON" bench/gpu_check.py --out "$OUT" --budget-s 190 "$@"
  rc=$?
  [ $rc -eq 124 ] && echo "gpu_check.py ran past 250 s and was stopped; partial log above"

  # ---- (d) training smoke (issue 18) ------------------------------------------------------------------
  # Deterministic cuBLAS and torch kernels where they exist, so that resume can match bit-for-bit.
  CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 75 "$PYTHON" bench/train_throughput.py --smoke --out "$OUT" \
    $([[ " $* " == *" --cpu-smoke "* ]] && echo --cpu-smoke)
  drc=$?
  [ $drc -eq 124 ] && echo "(d) training smoke ran past 75 s and was stopped; partial log above"
  [ $drc -ne 0 ] && rc=1

  # ---- (c) vLLM on GPU: HOOK for the serving engineer -------------------------------------------------
  # Put the vLLM part in bench/gpu_vllm_check.sh (executable, takes $OUT as its argument): install the
  # carried upstream vLLM wheels, start the server with CUDA graphs on, run the isolation test (mixed
  # strengths equal their solo runs) and the overhead benchmark (plain vLLM vs fairsteer, ratio >= 0.97),
  # and append its rows to "$OUT/summary.md". Budget: whatever is left of 8 minutes after parts a+b.
  if [ -x bench/gpu_vllm_check.sh ] && [[ " $* " != *" --cpu-smoke "* ]]; then
    bench/gpu_vllm_check.sh "$OUT" || rc=1
  else
    echo "(c) vLLM check: skipped (bench/gpu_vllm_check.sh not present, or --cpu-smoke)"
  fi
  exit $rc
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
