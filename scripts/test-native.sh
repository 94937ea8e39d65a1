#!/usr/bin/env bash
# Builds the core library and the C++ tests (ctest programs in native/trt/tests) in their own build
# directory (build/ctest, next to cmake-js's files, ignored by git) and runs them.
# Options pass through the environment: SETOKIM_CUDA=OFF|ON|AUTO, SETOKIM_TENSORRT=...
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${SETOKIM_CTEST_DIR:-build/ctest}
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" "${GEN[@]}" -DSETOKIM_BUILD_TESTS=ON
else
  cmake -S . -B "$BUILD" -DSETOKIM_BUILD_TESTS=ON
fi
cmake --build "$BUILD" -j"$(nproc 2>/dev/null || echo 2)"
cd "$BUILD" && ctest --output-on-failure
