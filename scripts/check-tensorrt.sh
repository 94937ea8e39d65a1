#!/usr/bin/env bash
# Compile-checks the TensorRT backend against a TensorRT include folder, without TensorRT's
# libraries or a GPU: every native/trt/tensorrt/*.cc, the CUDA helpers it uses (native/trt/cuda)
# and the Node-API binding, with g++
# -fsyntax-only -std=c++17, SETOKIM_WITH_TENSORRT and SETOKIM_WITH_CUDA defined.
#
#   npm run check:tensorrt -- /path/to/TensorRT/include [more TensorRT include folders...]
#
# Run it against TensorRT 10.3 (JetPack 6) and 11.x. CUDA headers come from CUDA_INCLUDE
# (default /usr/local/cuda/include). Exits non-zero on any error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ]; then
  echo "usage: npm run check:tensorrt -- /path/to/TensorRT/include" >&2
  exit 2
fi
cuda_inc="${CUDA_INCLUDE:-/usr/local/cuda/include}"
cxx="${CXX:-g++}"
napi_inc="$(cd "$root" && node -p "require('node-addon-api').include_dir" 2>/dev/null || true)"
[ -n "$napi_inc" ] && [ -d "$root/$napi_inc" ] && napi_inc="$root/$napi_inc"
node_inc="$(cd "$root" && node -p "require('node-api-headers').include_dir" 2>/dev/null || true)"

fail() { echo "check-tensorrt: $*" >&2; exit 2; }
[ -f "$cuda_inc/cuda_runtime_api.h" ] || fail "no CUDA headers at $cuda_inc (set CUDA_INCLUDE)"
[ -f "$napi_inc/napi.h" ] || fail "node-addon-api headers not found (run npm ci)"
[ -f "$node_inc/node_api.h" ] || fail "Node-API headers not found (node-api-headers; run npm ci)"

shopt -s nullglob
sources=("$root"/native/trt/cuda/*.cc "$root"/native/trt/tensorrt/*.cc "$root"/native/trt/addon/tensorrt_binding.cc)
[ ${#sources[@]} -gt 0 ] || fail "no TensorRT sources found"

status=0
for arg in "$@"; do
  trt_inc="$(cd "$arg" 2>/dev/null && pwd)" || fail "no such folder: $arg"
  version_h="$trt_inc/NvInferVersion.h"
  [ -f "$version_h" ] || fail "$trt_inc has no NvInferVersion.h: give TensorRT's include folder"
  [ -f "$trt_inc/NvOnnxParser.h" ] || fail "$trt_inc has no NvOnnxParser.h (the ONNX parser headers ship with TensorRT)"
  # The version, as the preprocessor sees it (11.x defines it through TRT_*_ENTERPRISE macros).
  version="$(printf '#include <NvInferVersion.h>\nNV_TENSORRT_MAJOR.NV_TENSORRT_MINOR.NV_TENSORRT_PATCH\n' |
    "$cxx" -E -P -I"$trt_inc" -x c++ - | tail -n 1 | tr -d ' ')"
  echo "check-tensorrt: TensorRT $version headers at $trt_inc"
  flags=(-fsyntax-only -std=c++17 -Wall -Wextra -Werror=return-type
    -DSETOKIM_WITH_TENSORRT=1 -DSETOKIM_WITH_CUDA=1 '-DSETOKIM_CUDA_VERSION="check"'
    -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED -DNAPI_CPP_EXCEPTIONS
    -I"$root/native/trt" -isystem "$trt_inc" -isystem "$cuda_inc" -isystem "$napi_inc" -isystem "$node_inc")
  errors=0
  for src in "${sources[@]}"; do
    rel="${src#"$root"/}"
    if out="$("$cxx" "${flags[@]}" "$src" 2>&1)"; then
      if [ -n "$out" ]; then echo "  warn $rel"; echo "$out" | sed 's/^/    /'; else echo "  ok   $rel"; fi
    else
      echo "  FAIL $rel"; echo "$out" | sed 's/^/    /'
      errors=$((errors + 1))
    fi
  done
  if [ $errors -gt 0 ]; then
    echo "check-tensorrt: TensorRT $version: $errors of ${#sources[@]} files failed"
    status=1
  else
    echo "check-tensorrt: TensorRT $version: all ${#sources[@]} files compile"
  fi
done
exit $status
