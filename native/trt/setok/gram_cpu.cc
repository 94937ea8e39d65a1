// The 8-lane kernel is only ever inlined into target("avx2") code; the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "setok/gram_cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "setok/fp_order.h"
#include "setok/parallel.h"

namespace setokim {
namespace {

constexpr int kMR = 6;    // rows per register tile (12 accumulators + 2 B + broadcast + product = 16 ymm)
constexpr int kKC = 256;  // depth per cache block (the accumulators carry over, so order is kept)
constexpr int kNR = 16;   // columns per panel: two 8-lane vectors or four 4-lane vectors
constexpr int kRowsPerTask = kMR * 8;

// Packs columns [j0, j0 + kNR) of x^T (rows j of x), depth [c0, c1), as panel[c][jj]; zero past n.
inline void PackPanel(const float* x, int n, int dim, int j0, int c0, int c1, float* panel) {
  for (int jj = 0; jj < kNR; ++jj) {
    const int j = j0 + jj;
    if (j < n) {
      const float* src = x + static_cast<size_t>(j) * dim;
      for (int c = c0; c < c1; ++c) panel[(c - c0) * kNR + jj] = src[c];
    } else {
      for (int c = c0; c < c1; ++c) panel[(c - c0) * kNR + jj] = 0.0f;
    }
  }
}

namespace generic {
#define SETOKIM_GRAM_LANES 4
#include "setok/gram_kernel.inc"
#undef SETOKIM_GRAM_LANES
}  // namespace generic

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#define SETOKIM_GRAM_LANES 8
#include "setok/gram_kernel.inc"
#undef SETOKIM_GRAM_LANES
}  // namespace avx2
#pragma GCC pop_options
#endif

#if defined(__x86_64__)
// SETOKIM_CPU_ISA=generic picks the portable kernels (the ARM path's code) on x86 too, for tests.
bool HasAvx2() {
  static const bool has = [] {
    const char* isa = std::getenv("SETOKIM_CPU_ISA");
    return __builtin_cpu_supports("avx2") && !(isa && std::strcmp(isa, "generic") == 0);
  }();
  return has;
}
#endif

void RowBlockDispatch(const float* a, int lda, int m, int i0, int i1, const float* packed, int dim, int npanels,
                      bool triangle, float* out, int ldo) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::RowBlock(a, lda, m, i0, i1, packed, dim, npanels, triangle, out, ldo);
#endif
  generic::RowBlock(a, lda, m, i0, i1, packed, dim, npanels, triangle, out, ldo);
}

int ColumnWidth(int m) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::ColumnWidth(m);
#endif
  return generic::ColumnWidth(m);
}

void PackColumns(const float* x, int dim, const int* cols, int m, float* packed) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::PackColumns(x, dim, cols, m, packed);
#endif
  generic::PackColumns(x, dim, cols, m, packed);
}

void ColumnRowsDispatch(const float* a, int lda, const int* idx, int count, int diagonal, const float* packed, int dim,
                        int m, float* out, int ldo) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::ColumnRows(a, lda, idx, count, diagonal, packed, dim, m, out, ldo);
#endif
  generic::ColumnRows(a, lda, idx, count, diagonal, packed, dim, m, out, ldo);
}

// Below this many multiply-adds one thread is faster than waking the pool's helpers.
#ifndef SETOKIM_PARALLEL_MADDS
#define SETOKIM_PARALLEL_MADDS 4e6
#endif
bool WorthThreads(double madds) { return madds > SETOKIM_PARALLEL_MADDS; }

// Packs rows of `bt` (n rows of depth dim, i.e. B^T) into [kc block][panel][c][kNR].
void PackAll(const float* bt, int n, int dim, std::vector<float>& packed) {
  const int npanels = (n + kNR - 1) / kNR;
  packed.resize(static_cast<size_t>(npanels) * kNR * dim);
  float* out = packed.data();  // the workers write through this (packed may be thread_local)
  const int nblocks = (dim + kKC - 1) / kKC;
  ParallelFor(
      npanels,
      [&](int p) {
        for (int b = 0; b < nblocks; ++b) {
          const int c0 = b * kKC;
          const int c1 = std::min(dim, c0 + kKC);
          float* dst = out + static_cast<size_t>(c0) * npanels * kNR + static_cast<size_t>(p) * (c1 - c0) * kNR;
          PackPanel(bt, n, dim, p * kNR, c0, c1, dst);
        }
      },
      WorthThreads(static_cast<double>(n) * dim * 8));
}

// Packed panels: a per-thread buffer reused from call to call (a fresh multi-MB allocation costs a
// page fault per 4 KiB every frame), or a temporary one above 64 MiB so nothing huge is kept.
std::vector<float>& PackBuffer(int n, int dim, std::vector<float>& temporary) {
  thread_local std::vector<float> reused;
  return static_cast<size_t>(n) * dim > (size_t{16} << 20) ? temporary : reused;
}

}  // namespace

void DistanceRow(float gii, const float* gjj, const float* g, float dim, int n, float* d) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::DistanceRow(gii, gjj, g, dim, n, d);
#endif
  generic::DistanceRow(gii, gjj, g, dim, n, d);
}

void DeltaRow(const float* d, const int32_t* rank, int ri, int n, float* best, float* max) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::DeltaRow(d, rank, ri, n, best, max);
#endif
  generic::DeltaRow(d, rank, ri, n, best, max);
}

void MirrorLower(float* a, int ld, int i0, int i1) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::MirrorLower(a, ld, i0, i1);
#endif
  generic::MirrorLower(a, ld, i0, i1);
}

void TransposeColumns(const float* src, int n, int m, int r0, int r1, float* const* dst) {
  int r = r0;
  for (; r + 8 <= r1; r += 8) {
#if defined(__x86_64__)
    if (HasAvx2()) {
      avx2::TransposeEight(src, m, n, r, dst + (r - r0));
      continue;
    }
#endif
    generic::TransposeEight(src, m, n, r, dst + (r - r0));
  }
  for (; r < r1; ++r)
    for (int j = 0; j < n; ++j) dst[r - r0][j] = src[static_cast<size_t>(j) * m + r];
}

float DensitySum(const float* d, int n, int k, float t) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::DensitySum(d, n, k, t);
#endif
  return generic::DensitySum(d, n, k, t);
}

void DensityRows(const float* d, int n, int k, int rows, float* kth, float* sum, const float* hint) {
  thread_local std::vector<float> scratch;  // kDensityBlock packed rows, reused call to call
  const size_t need = static_cast<size_t>(kDensityBlock) * (n + 16);
  if (scratch.size() < need) scratch.resize(need);
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::DensityRows(d, n, k, rows, kth, sum, scratch.data(), hint);
#endif
  generic::DensityRows(d, n, k, rows, kth, sum, scratch.data(), hint);
}

float KthSmallest(const float* v, int n, int k) {
#if defined(__x86_64__)
  if (HasAvx2()) return avx2::KthSmallest(v, n, k);
#endif
  return generic::KthSmallest(v, n, k);
}

double PeakGflops(double seconds) {
  const int threads = WorkerCount();
  std::vector<double> rate(threads);
  const long iters = 1 << 20;
  ParallelFor(threads, [&](int t) {
    const auto t0 = std::chrono::steady_clock::now();
    long rounds = 0;
    volatile float sink = 0;
    double elapsed = 0;
    do {
#if defined(__x86_64__)
      sink = sink + (HasAvx2() ? avx2::PeakLoop(iters) : generic::PeakLoop(iters));
#else
      sink = sink + generic::PeakLoop(iters);
#endif
      ++rounds;
      elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (elapsed < seconds);
    const int lanes = GramIsa()[0] == 'a' ? 8 : 4;
    rate[t] = 2.0 * 12 * lanes * static_cast<double>(iters) * rounds / elapsed / 1e9;
  });
  double total = 0;
  for (double r : rate) total += r;
  return total;
}

const char* GramIsa() {
#if defined(__x86_64__)
  return HasAvx2() ? "avx2" : "sse2";
#elif defined(__aarch64__)
  return "neon";
#else
  return "scalar";
#endif
}

int GramStride(int n) { return (n + kNR - 1) / kNR * kNR; }

void ComputeGram(const float* x, int n, int dim, std::vector<float>& gram) {
  const int ld = GramStride(n);
  gram.resize(static_cast<size_t>(n) * ld);
  std::vector<float> temporary;
  std::vector<float>& packed = PackBuffer(n, dim, temporary);
  PackAll(x, n, dim, packed);
  const int npanels = ld / kNR;
  const int tasks = (n + kRowsPerTask - 1) / kRowsPerTask;  // the top rows (most work) go first
  ParallelFor(
      tasks,
      [&](int t) {
        const int i0 = t * kRowsPerTask;
        RowBlockDispatch(x, dim, n, i0, std::min(n, i0 + kRowsPerTask), packed.data(), dim, npanels, true, gram.data(),
                         ld);
      },
      WorthThreads(0.5 * n * n * dim));
}

void GramColumns(const float* x, int n, int dim, const std::vector<int>& cols, std::vector<float>& out) {
  const int m = static_cast<int>(cols.size());
  const int ldo = GramStride(m);
  out.resize(static_cast<size_t>(n) * ldo);
  if (m == 0) return;
  // The m rows become the packed columns; every row of x is broadcast against them. The other rows
  // get all m columns; the m rows themselves only the upper triangle of their m x m block (G is
  // symmetric bit for bit), mirrored afterwards.
  thread_local std::vector<float> packed;
  packed.resize(static_cast<size_t>(ColumnWidth(m)) * dim);
  PackColumns(x, dim, cols.data(), m, packed.data());
  thread_local std::vector<int> others;
  others.clear();
  thread_local std::vector<char> in_cols;
  in_cols.assign(n, 0);
  for (int c : cols) in_cols[c] = 1;
  for (int j = 0; j < n; ++j)
    if (!in_cols[j]) others.push_back(j);
  const int count = static_cast<int>(others.size());
  const int tasks = (count + kRowsPerTask - 1) / kRowsPerTask, own = (m + kRowsPerTask - 1) / kRowsPerTask;
  float* o = out.data();
  const float* pk = packed.data();  // thread_local buffers: the workers see them through pointers
  const int* rest = others.data();
  ParallelFor(
      own + tasks,
      [&](int t) {
        if (t < own) {  // the changed rows first: their first tiles hold the most work
          const int r0 = t * kRowsPerTask;
          ColumnRowsDispatch(x, dim, cols.data() + r0, std::min(kRowsPerTask, m - r0), r0, pk, dim, m, o, ldo);
        } else {
          const int i0 = (t - own) * kRowsPerTask;
          ColumnRowsDispatch(x, dim, rest + i0, std::min(kRowsPerTask, count - i0), -1, pk, dim, m, o, ldo);
        }
      },
      WorthThreads(static_cast<double>(m) * n * dim));
  for (int r = 1; r < m; ++r)
    for (int q = 0; q < r; ++q) o[static_cast<size_t>(cols[r]) * ldo + q] = o[static_cast<size_t>(cols[q]) * ldo + r];
}

void ReferenceGemm(const float* a, const float* b, int m, int n, int k, std::vector<float>& c) {
  // B (k x n) transposed to n rows of depth k, then the same blocked kernel.
  std::vector<float> bt(static_cast<size_t>(n) * k);
  for (int kk = 0; kk < k; ++kk)
    for (int j = 0; j < n; ++j) bt[static_cast<size_t>(j) * k + kk] = b[static_cast<size_t>(kk) * n + j];
  const int ld = GramStride(n);
  std::vector<float> out(static_cast<size_t>(m) * ld);
  std::vector<float> temporary;
  std::vector<float>& packed = PackBuffer(n, k, temporary);
  PackAll(bt.data(), n, k, packed);
  const int tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  ParallelFor(tasks, [&](int t) {
    const int i0 = t * kRowsPerTask;
    RowBlockDispatch(a, k, m, i0, std::min(m, i0 + kRowsPerTask), packed.data(), k, ld / kNR, false, out.data(), ld);
  });
  c.resize(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    std::memcpy(c.data() + static_cast<size_t>(i) * n, out.data() + static_cast<size_t>(i) * ld, sizeof(float) * n);
}

}  // namespace setokim
