#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU (docs/gpu.md): builds structsparse._C with
# its CUDA kernels for the visible GPU, checks that every op has its CUDA kernel, runs the GPU
# tests (tests/test_gpu.py: compiled Triton and CUDA kernels against the reference backend; then
# tests/test_cuda_backend.py and tests/test_triton_ops.py; then tests/test_backend_parity.py over
# cuda and triton), then bench/gpu_step_time.py for both
# backends. Each stage runs under its own time limit and within a total budget (GPU_CHECK_BUDGET,
# default 450 s: under 8 minutes on one H100 with the build); a failed or timed-out stage is
# recorded and the next one still runs.
#
# Usage: bash bench/gpu_check.sh OUT_DIR
#   OUT_DIR/summary.txt     one line per stage: name, exit status (124: timed out), seconds
#   OUT_DIR/<stage>.log     each stage's output; OUT_DIR/gpu_check.log the whole run (set -x)
#   OUT_DIR/*.xml, *.json   pytest JUnit reports, benchmark rows
# Needs a CUDA build of torch, nvcc of the same CUDA major version (CUDA_HOME or on the PATH),
# pytest and triton. The extension is rebuilt in place (structsparse/_C*.so of this checkout).
set -uo pipefail
OUT="${1:?usage: bash bench/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY="${PYTHON:-python}"
BUDGET="${GPU_CHECK_BUDGET:-450}"
T0=$(date +%s)
: >"$OUT/summary.txt"
set -x

# stage NAME LIMIT_S CMD...: runs CMD with its output in OUT/NAME.log, at most LIMIT_S seconds and
# never past the total budget; appends "NAME rc=.. s=.." to summary.txt.
stage() {
  local name="$1" limit="$2" left rc start
  shift 2
  left=$((BUDGET - ($(date +%s) - T0)))
  if [ "$left" -lt "$limit" ]; then limit="$left"; fi
  if [ "$limit" -lt 10 ]; then
    echo "$name rc=skipped (total budget of ${BUDGET} s spent)" | tee -a "$OUT/summary.txt"
    return 0
  fi
  start=$(date +%s)
  timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc s=$(($(date +%s) - start)) (limit ${limit} s)" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$name.log"
  return 0
}

stage env 60 bash -c "nvidia-smi; $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__); print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))'; command -v nvcc && nvcc --version; nproc; free -g"

# TORCH_CUDA_ARCH_LIST unset: the build targets the visible GPU (plus PTX)
stage build 240 env MAX_JOBS="${MAX_JOBS:-$(nproc)}" STRUCTSPARSE_REQUIRE_EXT=1 STRUCTSPARSE_REQUIRE_CUDA=1 \
  "$PY" setup.py build_ext --inplace --force

stage registered 60 "$PY" -c '
import torch
from structsparse import ops
from structsparse.backends import cuda
print("loaded", ops.loaded(), "triton stand-ins", ops.TRITON_CUDA_OPS)
print("compiled CUDA kernels", cuda.compiled_cuda_ops())
print("missing", cuda.missing_cuda_kernels())
print("available", cuda.available())
assert cuda.has_cuda_kernels() and cuda.available()[0]
'

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs --durations=10)
stage test_gpu 150 "${PYTEST[@]}" --junitxml="$OUT/test_gpu.xml" tests/test_gpu.py
stage test_backends 120 "${PYTEST[@]}" --junitxml="$OUT/test_backends.xml" \
  tests/test_cuda_backend.py tests/test_triton_ops.py
stage test_parity 120 "${PYTEST[@]}" --junitxml="$OUT/test_parity.xml" tests/test_backend_parity.py

stage bench_cuda 60 "$PY" bench/gpu_step_time.py --backend cuda --sizes 1e7 1e8 1e9 --json "$OUT/gpu_step_time_cuda.json"
stage bench_triton 60 "$PY" bench/gpu_step_time.py --backend triton --sizes 1e7 1e8 1e9 --json "$OUT/gpu_step_time_triton.json"

set +x
echo "gpu_check: done in $(($(date +%s) - T0)) s; results in $OUT"
cat "$OUT/summary.txt"
