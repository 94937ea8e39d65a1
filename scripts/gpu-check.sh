#!/usr/bin/env bash
# The one GPU check (device machine: CUDA, CMake, PyTorch, no Node). Builds the core library and the
# ctest programs with the CUDA tier, runs ctest (cuda_cluster_test compares CUDA with CPU), the
# C++ timing program at 729 x 1152, and the PyTorch version of the same algorithm; everything goes
# to $OUT. Locally: SETOKIM_CUDA=OFF OUT=/tmp/gpu-out bash scripts/gpu-check.sh (checks the logic).
set -u
OUT=${OUT:-/tmp/setokim-gpu-check}
CUDA_MODE=${SETOKIM_CUDA:-ON}
BUILD=${BUILD_DIR:-build-gpu}
mkdir -p "$OUT"
step() { echo "== $1 ($(date -u +%T))" | tee -a "$OUT/summary.txt"; }

step env
{ nvidia-smi || true; nvcc --version || true; cmake --version | head -1; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' || true; } > "$OUT/env.txt" 2>&1
tail -n 4 "$OUT/env.txt" | tee -a "$OUT/summary.txt"

step configure
cmake -S . -B "$BUILD" -DSETOKIM_BUILD_TESTS=ON -DSETOKIM_CUDA="$CUDA_MODE" > "$OUT/configure.txt" 2>&1
echo "configure rc=$?" | tee -a "$OUT/summary.txt"
grep 'setokim:' "$OUT/configure.txt" | tee -a "$OUT/summary.txt"

step build
cmake --build "$BUILD" -j16 > "$OUT/build.txt" 2>&1
rc=$?
echo "build rc=$rc" | tee -a "$OUT/summary.txt"
if [ $rc -ne 0 ]; then grep -E 'error' "$OUT/build.txt" | head -20 | tee -a "$OUT/summary.txt"; fi

step ctest
(cd "$BUILD" && ctest --output-on-failure --timeout 240) > "$OUT/ctest.txt" 2>&1
echo "ctest rc=$?" | tee -a "$OUT/summary.txt"
grep -E 'tests passed|Passed|Failed|passed,|skipped|bit-identical' "$OUT/ctest.txt" | tee -a "$OUT/summary.txt"
"$BUILD/cuda_cluster_test" > "$OUT/cuda_cluster_test.txt" 2>&1
tail -n 3 "$OUT/cuda_cluster_test.txt" | tee -a "$OUT/summary.txt"

step bench-cuda
SETOKIM_BENCH_REPS=20 "$BUILD/cluster_bench_test" > "$OUT/bench_cuda.txt" 2>&1
cat "$OUT/bench_cuda.txt" | tee -a "$OUT/summary.txt"

step bench-torch
if [ "$CUDA_MODE" = "OFF" ]; then
  echo "skipped (SETOKIM_CUDA=OFF)" | tee -a "$OUT/summary.txt"
else
  python3 bench/cluster_torch.py --reps 100 > "$OUT/bench_torch.json" 2> "$OUT/bench_torch.err"
  echo "torch rc=$?" | tee -a "$OUT/summary.txt"
  cat "$OUT/bench_torch.json" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/bench_torch.err" | tee -a "$OUT/summary.txt"
fi
step done
