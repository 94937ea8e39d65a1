// The 8-lane kernel is only ever inlined into target("avx2") code; the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "setok/gram_cpu.h"

#include <algorithm>
#include <cstring>

#include "setok/fp_order.h"
#include "setok/parallel.h"

namespace setokim {
namespace {

constexpr int kMR = 6;    // rows per register tile
constexpr int kKC = 256;  // depth per cache block (the accumulators carry over, so order is kept)
constexpr int kNR = 16;   // columns per panel: two 8-lane vectors or four 4-lane vectors
constexpr int kRowsPerTask = kMR * 8;

template <int L>
struct Vec {
  typedef float type __attribute__((vector_size(L * 4)));
  typedef float unaligned __attribute__((vector_size(L * 4), aligned(4)));
};

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

// One kMR x kNR tile over depth [c0, c1): acc = first ? 0 : C; acc += round(a * b) in ascending c.
template <int L>
inline __attribute__((always_inline)) void MicroKernel(const float* const* arow, const float* panel, int c0, int c1,
                                                       bool first, float* out, int ldo, int rows) {
  using V = typename Vec<L>::type;
  using VU = typename Vec<L>::unaligned;
  constexpr int NV = kNR / L;
  V acc[kMR][NV];
  for (int r = 0; r < kMR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = (first || r >= rows) ? V{} : *reinterpret_cast<const VU*>(out + r * ldo + v * L);
  for (int c = c0; c < c1; ++c) {
    const float* bp = panel + (c - c0) * kNR;
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const VU*>(bp + v * L);
    for (int r = 0; r < kMR; ++r) {
      const float s = arow[r][c];
      V a;
      for (int l = 0; l < L; ++l) a[l] = s;
      for (int v = 0; v < NV; ++v) acc[r][v] += fp::Opaque(a * b[v]);
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<VU*>(out + r * ldo + v * L) = acc[r][v];
}

// Computes rows [i0, i1) of C = A * B^T-packed, columns from the panel `jstart(i)` on (triangle) up
// to npanels. packed: all panels for depth block kc, laid out [panel][c][kNR].
template <int L>
inline __attribute__((always_inline)) void RowBlock(const float* a, int lda, int m, int i0, int i1, const float* packed,
                                                    int dim, int npanels, bool triangle, float* out, int ldo) {
  for (int c0 = 0; c0 < dim; c0 += kKC) {
    const int c1 = std::min(dim, c0 + kKC);
    const int kc = c1 - c0;
    const float* pblock = packed + static_cast<size_t>(c0) * npanels * kNR;  // [panel][kc][kNR]
    for (int p = 0; p < npanels; ++p) {
      const int j0 = p * kNR;
      if (triangle && j0 + kNR <= i0) continue;
      const float* panel = pblock + static_cast<size_t>(p) * kc * kNR;
      for (int r0 = i0; r0 < i1; r0 += kMR) {
        if (triangle && j0 + kNR <= r0) continue;
        const int rows = std::min(kMR, m - r0);
        const float* arow[kMR];
        for (int r = 0; r < kMR; ++r) arow[r] = a + static_cast<size_t>(r < rows ? r0 + r : r0) * lda;
        MicroKernel<L>(arow, panel, c0, c1, c0 == 0, out + static_cast<size_t>(r0) * ldo + j0, ldo, rows);
      }
    }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void RowBlockAvx2(const float* a, int lda, int m, int i0, int i1, const float* packed,
                                                  int dim, int npanels, bool triangle, float* out, int ldo) {
  RowBlock<8>(a, lda, m, i0, i1, packed, dim, npanels, triangle, out, ldo);
}
bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

void RowBlockGeneric(const float* a, int lda, int m, int i0, int i1, const float* packed, int dim, int npanels,
                     bool triangle, float* out, int ldo) {
  RowBlock<4>(a, lda, m, i0, i1, packed, dim, npanels, triangle, out, ldo);
}

void RowBlockDispatch(const float* a, int lda, int m, int i0, int i1, const float* packed, int dim, int npanels,
                      bool triangle, float* out, int ldo) {
#if defined(__x86_64__)
  if (HasAvx2()) return RowBlockAvx2(a, lda, m, i0, i1, packed, dim, npanels, triangle, out, ldo);
#endif
  RowBlockGeneric(a, lda, m, i0, i1, packed, dim, npanels, triangle, out, ldo);
}

// Packs rows of `bt` (n rows of depth dim, i.e. B^T) into [kc block][panel][c][kNR].
std::vector<float> PackAll(const float* bt, int n, int dim) {
  const int npanels = (n + kNR - 1) / kNR;
  std::vector<float> packed(static_cast<size_t>(npanels) * kNR * dim);
  const int nblocks = (dim + kKC - 1) / kKC;
  ParallelFor(npanels, [&](int p) {
    for (int b = 0; b < nblocks; ++b) {
      const int c0 = b * kKC;
      const int c1 = std::min(dim, c0 + kKC);
      float* dst = packed.data() + static_cast<size_t>(c0) * npanels * kNR + static_cast<size_t>(p) * (c1 - c0) * kNR;
      PackPanel(bt, n, dim, p * kNR, c0, c1, dst);
    }
  });
  return packed;
}

}  // namespace

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
  const std::vector<float> packed = PackAll(x, n, dim);
  const int npanels = ld / kNR;
  const int tasks = (n + kRowsPerTask - 1) / kRowsPerTask;  // the top rows (most work) go first
  ParallelFor(tasks, [&](int t) {
    const int i0 = t * kRowsPerTask;
    RowBlockDispatch(x, dim, n, i0, std::min(n, i0 + kRowsPerTask), packed.data(), dim, npanels, true, gram.data(), ld);
  });
}

void UpdateGramRows(const float* x, int n, int dim, const std::vector<int>& rows, std::vector<float>& gram) {
  if (rows.empty()) return;
  const int ld = GramStride(n);
  // The changed rows, gathered, times all rows: a (rows x n) GEMM in the same order per entry.
  const int m = static_cast<int>(rows.size());
  std::vector<float> a(static_cast<size_t>(m) * dim);
  for (int r = 0; r < m; ++r) std::memcpy(a.data() + static_cast<size_t>(r) * dim, x + static_cast<size_t>(rows[r]) * dim, sizeof(float) * dim);
  const std::vector<float> packed = PackAll(x, n, dim);
  std::vector<float> out(static_cast<size_t>(m) * ld);
  const int tasks = (m + kMR * 2 - 1) / (kMR * 2);
  ParallelFor(tasks, [&](int t) {
    const int i0 = t * kMR * 2;
    RowBlockDispatch(a.data(), dim, m, i0, std::min(m, i0 + kMR * 2), packed.data(), dim, ld / kNR, false, out.data(), ld);
  });
  for (int r = 0; r < m; ++r) {
    const int i = rows[r];
    const float* src = out.data() + static_cast<size_t>(r) * ld;
    for (int j = 0; j < n; ++j) {
      gram[static_cast<size_t>(i) * ld + j] = src[j];
      gram[static_cast<size_t>(j) * ld + i] = src[j];
    }
  }
}

void ReferenceGemm(const float* a, const float* b, int m, int n, int k, std::vector<float>& c) {
  // B (k x n) transposed to n rows of depth k, then the same blocked kernel.
  std::vector<float> bt(static_cast<size_t>(n) * k);
  for (int kk = 0; kk < k; ++kk)
    for (int j = 0; j < n; ++j) bt[static_cast<size_t>(j) * k + kk] = b[static_cast<size_t>(kk) * n + j];
  const int ld = GramStride(n);
  std::vector<float> out(static_cast<size_t>(m) * ld);
  const std::vector<float> packed = PackAll(bt.data(), n, k);
  const int tasks = (m + kRowsPerTask - 1) / kRowsPerTask;
  ParallelFor(tasks, [&](int t) {
    const int i0 = t * kRowsPerTask;
    RowBlockDispatch(a, k, m, i0, std::min(m, i0 + kRowsPerTask), packed.data(), k, ld / kNR, false, out.data(), ld);
  });
  c.resize(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i) std::memcpy(c.data() + static_cast<size_t>(i) * n, out.data() + static_cast<size_t>(i) * ld, sizeof(float) * n);
}

}  // namespace setokim
