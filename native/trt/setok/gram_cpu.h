// The Gram matrix G = X X^T of n x dim float32 rows, in the order the reference defines: every
// G[i][j] is one accumulator that walks c = 0..dim-1 adding the rounded product x_i[c] * x_j[c]
// (no FMA). A blocked, register-tiled GEMM vectorised across j computes exactly that, so it is as
// fast as a GEMM and bit-identical to the plain loop. Only the upper triangle (j >= i, in whole
// tiles) is computed; G is symmetric. Rows of G have a padded stride (see GramStride).
// Thread safety: callable from any thread (each thread keeps its own packing buffer); ComputeGram,
// GramColumns and ReferenceGemm spread their work over all cores (ParallelFor).
#pragma once
#include <cstdint>
#include <vector>

namespace setokim {

// Vector ISA the Gram kernel uses on this CPU ("avx2", "sse2", "neon" or "scalar").
const char* GramIsa();

// Row stride of the Gram matrix for n rows (n rounded up to the kernel's column tile).
int GramStride(int n);

// G[i * GramStride(n) + j] for all j >= i rounded down to the tile; entries below are undefined.
// Reads x (n * dim floats). Uses all cores.
void ComputeGram(const float* x, int n, int dim, std::vector<float>& gram);

// Columns `cols` (m of them) of G for every row: out[j * GramStride(m) + r] = G[j][cols[r]] for j < n,
// r < m, each entry in the reference order (bit-identical to ComputeGram's, as a*b == b*a). Only the m
// rows `cols` are packed, every row of x is read once: what a stream frame with m changed patches
// costs (n * m * dim multiply-adds, m rounded up to a vector: 8 on AVX2, 4 elsewhere). Uses all cores.
// The columns must be distinct (as a stream's changed rows are); their m x m block is computed once
// (its upper triangle, mirrored).
void GramColumns(const float* x, int n, int dim, const std::vector<int>& cols, std::vector<float>& out);

// Step 2 for one row: d[j] = sqrt(max(0, (gii + gjj[j]) - 2 g[j]) / dim) in float32, vectorised.
void DistanceRow(float gii, const float* gjj, const float* g, float dim, int n, float* d);

// One row of step 4: *best = min d[j] over j with rank[j] < ri (INFINITY if none), *max = max(0,
// max d[j]). d must hold no NaN and no -0 (as DistanceRow's output), so the result is exact.
void DeltaRow(const float* d, const int32_t* rank, int ri, int n, float* best, float* max);

// The k-th smallest of n non-negative floats (1 <= k <= n), vectorised (the density's selection).
float KthSmallest(const float* v, int n, int k);

// a[i * ld + j] = a[j * ld + i] for every j < i, i in [i0, i1): the lower triangle from the upper.
// Rows [i0, i1) are written, rows above read: disjoint row ranges may run concurrently.
void MirrorLower(float* a, int ld, int i0, int i1);

// dst[r - r0][j] = src[j * m + r] for r in [r0, r1), j < n: columns r0..r1 of the n x m row-major
// block src written out as rows (dst: one pointer per column, each row n floats). Vectorised.
void TransposeColumns(const float* src, int n, int m, int r0, int r1, float* const* dst);

// Step 3's sum for one row of n distances (non-negative), given t = KthSmallest(d, n, k): the
// rounded squares of the k nearest (d < t, then the lowest-index ties at t) added in index order.
float DensitySum(const float* d, int n, int k, float t);

// Rows DensityRows takes at once.
constexpr int kDensityBlock = 8;

// Step 3 for `rows` (1..kDensityBlock) consecutive rows of an n x n distance matrix starting at d:
// kth[r] = KthSmallest and sum[r] = DensitySum of row r, bit for bit, in about three quarters of the
// time (the rows' index-order sums run side by side). hint (optional): per row a distance near t
// (0 = none), e.g. the row's t in a stream's previous frame: t is then selected among the values up
// to a little above it, when at least k are (about half the time of a selection over the whole row);
// the result does not depend on it. kth may be the same array as hint.
void DensityRows(const float* d, int n, int k, int rows, float* kth, float* sum, const float* hint = nullptr);

// GFLOP/s of a register-only loop of rounded multiply then add (the Gram kernel's instruction
// mix, no memory) on every core for about `seconds`: the limit the Gram step can approach.
double PeakGflops(double seconds);

// Plain float32 GEMM C[m x n] = A[m x k] * B[k x n] (row-major), the same kernel without the
// symmetric shortcut: the benchmark's yardstick for "how fast can this machine multiply matrices".
void ReferenceGemm(const float* a, const float* b, int m, int n, int k, std::vector<float>& c);

}  // namespace setokim
