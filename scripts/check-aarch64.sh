#!/usr/bin/env bash
# Cross-compiles the CPU tier (core library + ctest programs, no Node addon, no CUDA) for Jetson's
# ARM cores (aarch64, Cortex-A78AE) with cmake/toolchains/aarch64-linux-gnu.cmake, and runs it under
# qemu user-mode emulation. Checks, in order:
#   1. every program is an aarch64 ELF;
#   2. the core library holds no fused multiply-add instruction (the reference rounds each product);
#   3. each ctest program passes under qemu, dpc_knn_test on the NEON kernels;
#   4. the clustering of a few inputs gives the same bits on aarch64 as on this x86 machine (AVX2
#      and generic kernels): digests of centres, labels, scores, rho and the Gram matrix;
#   5. the Node addon's sources (native/trt/addon) compile for aarch64 against node-addon-api and the
#      Node-API headers (after `npm ci`), and link into a .node whose only unresolved symbols are
#      Node-API's (no aarch64 Node here to load it).
# Prints "skipped" and exits 0 when the cross compiler or qemu is missing. Needs (Debian/Ubuntu):
#   apt-get install -y g++-aarch64-linux-gnu qemu-user-static
# Emulated timings say nothing about a Jetson; this proves correctness only.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=aarch64-linux-gnu
SYSROOT=/usr/$TRIPLE
BUILD=${SETOKIM_AARCH64_DIR:-build/aarch64}
HOST=${SETOKIM_AARCH64_HOST_DIR:-build/aarch64-host}  # x86 core library for step 4

missing=()
command -v "$TRIPLE-g++" >/dev/null 2>&1 || missing+=("$TRIPLE-g++")
QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
[ -n "$QEMU" ] || missing+=("qemu-aarch64-static")
[ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ] || missing+=("$SYSROOT (aarch64 libc)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-aarch64: skipped: ${missing[*]} not found (apt-get install -y g++-aarch64-linux-gnu qemu-user-static)"
  exit 0
fi
start=$SECONDS
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
JOBS=$(nproc 2>/dev/null || echo 2)
run_arm() { "$QEMU" -L "$SYSROOT" "$@"; }

echo "== configure and build ($BUILD)"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
    -DSETOKIM_BUILD_TESTS=ON -DSETOKIM_CUDA=OFF -DSETOKIM_TENSORRT=OFF >/dev/null
fi
cmake --build "$BUILD" -j"$JOBS"
build_s=$((SECONDS - start))

failed=0
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

echo "== 1. binaries are aarch64"
programs=()
for src in native/trt/tests/*_test.cc; do
  programs+=("$(basename "$src" .cc)")
done
for p in "${programs[@]}" libsetokim_core.a; do
  f=$BUILD/$p
  [ "$p" = libsetokim_core.a ] && f=$(find "$BUILD/CMakeFiles/setokim_core.dir" -name 'dpc_knn.cc.o' | head -1)
  # e_machine (ELF offset 18) is 183 (0xb7) for aarch64; `file` says so in words where installed.
  machine=$(od -An -tu2 -j18 -N2 "$f" | tr -d ' ')
  desc=$(command -v file >/dev/null 2>&1 && file -b "$f" | cut -d, -f1-2 || echo "e_machine $machine")
  if [ "$machine" = 183 ]; then echo "  $p: $desc"; else fail "$p is not aarch64 ($desc)"; fi
done

echo "== 2. no fused multiply-add in the core library"
fused=$("$TRIPLE-objdump" -d --no-show-raw-insn "$BUILD/libsetokim_core.a" | grep -cE $'\t(fmadd|fmsub|fnmadd|fnmsub|fmla|fmls)\t' || true)
if [ "$fused" = 0 ]; then echo "  0 fmadd/fmsub/fnmadd/fnmsub/fmla/fmls instructions"; else fail "$fused fused multiply-add instructions in libsetokim_core.a"; fi

echo "== 3. ctest programs under $(basename "$QEMU")"
for p in "${programs[@]}"; do
  t0=$SECONDS
  # One repetition of the benchmark: emulated timings mean nothing, the result check is what counts.
  if out=$(SETOKIM_BENCH_REPS=1 run_arm "$BUILD/$p" 2>&1); then rc=0; else rc=$?; fi
  echo "$out" | grep -E '^(kernels:|FAIL|cpu |cuda|  n=)' | sed 's/^/  /' || true
  summary=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1 || true)
  [ -n "$summary" ] || summary=$(echo "$out" | tail -1)
  echo "  $p: ${summary} (exit $rc, $((SECONDS - t0)) s)"
  # 77: the test skipped itself (ctest's SKIP_RETURN_CODE; a CUDA test in this CPU-only build).
  [ "$rc" = 0 ] || [ "$rc" = 77 ] || fail "$p exited $rc under qemu"
  if [ "$p" = dpc_knn_test ] && ! echo "$out" | grep -qx 'kernels: neon'; then fail "dpc_knn_test did not run the NEON kernels"; fi
done

echo "== 4. same bits as x86"
if command -v g++ >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then
  mkdir -p "$BUILD/digest"
  cat > "$BUILD/digest/digest.cc" <<'EOF'
// FNV-1a digests of the clustering (centres, labels, scores, rho) and of the Gram matrix for a few
// inputs; printed per case so two machines' outputs can be compared line by line.
#include <cstdio>
#include <cstring>
#include <vector>
#include "setok/dpc_knn.h"
#include "setok/gram_cpu.h"
#include "test_util.h"
using namespace setokim;
static unsigned long long Fnv(const void* p, size_t bytes, unsigned long long h = 1469598103934665603ull) {
  for (size_t i = 0; i < bytes; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  return h;
}
template <typename T> static unsigned long long Fnv(const std::vector<T>& v) { return Fnv(v.data(), v.size() * sizeof(T)); }
static void Case(const char* name, const std::vector<float>& x, int n, int dim, int k, double threshold) {
  ClusterParams p;
  p.n = n; p.dim = dim; p.k = k; p.threshold = threshold; p.fallback = 16;
  const ClusterResult r = DpcKnn(p).Cluster(x.data());
  std::vector<float> g;
  ComputeGram(x.data(), n, dim, g);
  unsigned long long gh = 1469598103934665603ull;  // the upper triangle (the rest is undefined)
  for (int i = 0; i < n; ++i) gh = Fnv(&g[static_cast<size_t>(i) * GramStride(n) + i], sizeof(float) * (n - i), gh);
  std::printf("%-10s centres %zu %016llx labels %016llx scores %016llx rho %016llx gram %016llx\n", name, r.centers.size(),
              Fnv(r.centers), Fnv(r.labels), Fnv(r.scores), Fnv(r.rho), gh);
}
int main() {
  using namespace setokim::test;
  Case("random", RandomFeatures(96, 40, 3), 96, 40, 8, 0.5);
  Case("repeated", RepeatedFeatures(150, 12, 20, 8), 150, 12, 9, 0.2);
  Case("256x64", PlantedFeatures(16, 16, 64, 6, 7, 0.3), 256, 64, 16, 0.4);
  Case("729x1152", PlantedFeatures(27, 27, 1152, 5, 21, 0.5), 729, 1152, 64, 0.55);
  Case("big", RandomFeatures(300, 300, 11, 1e18f), 300, 300, 20, 0.5);  // near float overflow
  return 0;
}
EOF
  if [ ! -f "$HOST/CMakeCache.txt" ]; then
    cmake -S . -B "$HOST" "${GEN[@]}" -DSETOKIM_CUDA=OFF -DSETOKIM_TENSORRT=OFF >/dev/null
  fi
  cmake --build "$HOST" --target setokim_core -j"$JOBS" >/dev/null
  flags=(-std=gnu++17 -O2 -ffp-contract=off -Inative/trt -Inative/trt/tests -pthread)
  arm_flags=($(grep -oE -- '-mcpu=[^ ]+' "$BUILD/CMakeCache.txt" | head -1 || true))  # the toolchain's CPU
  "$TRIPLE-g++" "${arm_flags[@]}" "${flags[@]}" "$BUILD/digest/digest.cc" "$BUILD/libsetokim_core.a" -o "$BUILD/digest/digest-aarch64"
  g++ "${flags[@]}" "$BUILD/digest/digest.cc" "$HOST/libsetokim_core.a" -o "$BUILD/digest/digest-x86"
  run_arm "$BUILD/digest/digest-aarch64" > "$BUILD/digest/aarch64.txt"
  "$BUILD/digest/digest-x86" > "$BUILD/digest/x86.txt"
  SETOKIM_CPU_ISA=generic "$BUILD/digest/digest-x86" > "$BUILD/digest/x86-generic.txt"
  sed 's/^/  aarch64 neon: /' "$BUILD/digest/aarch64.txt"
  for isa in x86 x86-generic; do
    if cmp -s "$BUILD/digest/aarch64.txt" "$BUILD/digest/$isa.txt"; then
      echo "  $isa: identical ($(wc -l < "$BUILD/digest/$isa.txt") cases)"
    else
      fail "aarch64 differs from $isa:"
      diff "$BUILD/digest/$isa.txt" "$BUILD/digest/aarch64.txt" || true
    fi
  done
else
  echo "  skipped: needs an x86-64 host with g++"
fi

echo "== 5. Node addon compiles for aarch64"
napi_inc=""
for d in node_modules/node-api-headers/include "$HOME"/.cmake-js/node-*/v*/include/node /usr/include/node; do
  if [ -f "$d/node_api.h" ]; then napi_inc=$d; break; fi
done
if [ -f node_modules/node-addon-api/napi.h ] && [ -n "$napi_inc" ]; then
  mkdir -p "$BUILD/addon"
  arm_flags=($(grep -oE -- '-mcpu=[^ ]+' "$BUILD/CMakeCache.txt" | head -1 || true))
  objs=()
  for src in native/trt/addon/*.cc; do  # the flags CMakeLists.txt gives setokim_addon
    obj=$BUILD/addon/$(basename "$src" .cc).o
    if "$TRIPLE-g++" "${arm_flags[@]}" -std=gnu++17 -O3 -fPIC -Wall -Wextra -DBUILDING_NODE_EXTENSION \
        -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_DEPRECATED -DNAPI_CPP_EXCEPTIONS -DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS \
        -Inative/trt -Inode_modules/node-addon-api -I"$napi_inc" -c "$src" -o "$obj"; then
      objs+=("$obj")
    else
      fail "$src does not compile for aarch64"
    fi
  done
  if [ ${#objs[@]} -gt 0 ]; then
    # -z defs lists every symbol the .node leaves to its loader; all must be Node's napi_*.
    "$TRIPLE-g++" -shared -pthread -Wl,-z,defs "${objs[@]}" "$BUILD/libsetokim_core.a" -o "$BUILD/addon/setokim.node" \
      > "$BUILD/addon/link.log" 2>&1 && link_rc=0 || link_rc=$?
    undefined=$(grep -oE "undefined reference to \`[^']+'" "$BUILD/addon/link.log" | sort -u | sed "s/.*\`//; s/'$//" || true)
    others=$(echo "$undefined" | grep -vE '^(napi_|node_api_)' | grep -v '^$' || true)
    if [ "$link_rc" != 0 ] && [ -z "$undefined" ]; then
      fail "the aarch64 addon does not link: $(tail -3 "$BUILD/addon/link.log")"
    elif [ -n "$others" ]; then
      fail "the aarch64 addon leaves non-Node-API symbols unresolved: $(echo $others)"
    else
      echo "  ${#objs[@]} sources compiled (headers: $napi_inc); linked: only $(echo "$undefined" | grep -c .) napi_* symbols left to Node"
    fi
  fi
else
  echo "  skipped: node_modules/node-addon-api or the Node-API headers missing (run npm ci first)"
fi

echo "== check-aarch64: build ${build_s} s, total $((SECONDS - start)) s"
if [ "$failed" -gt 0 ]; then
  echo "check-aarch64: $failed check(s) FAILED"
  exit 1
fi
echo "check-aarch64: all checks passed (aarch64 under qemu, not on a Jetson)"
