// Kernels of DpcKnnCuda. Every float operation that the reference rounds is written with an _rn
// intrinsic, which nvcc never contracts into an FMA: the results equal the CPU's bit for bit.
#include <math_constants.h>

#include "setok/dpc_knn_kernels.h"

namespace setokim::cuda {
namespace {

// G[i][j] = sum over c ascending of round(x_i[c] * x_j[c]); upper-triangle blocks compute, and write
// both G[i][j] and G[j][i]. Each output is one accumulator walked in order (splitting c would change
// the rounding), so the parallelism is over output tiles only. TILE x TILE outputs per block,
// PER x PER per thread ((TILE/PER)^2 threads); the default is the fastest measured on an H100.
template <int TILE, int PER>
__global__ void GramKernel(const float* __restrict__ x, int n, int dim, float* __restrict__ g) {
  constexpr int T = TILE / PER;  // threads per side
  const int bi = blockIdx.y, bj = blockIdx.x;
  if (bj < bi) return;
  __shared__ float as[TILE][TILE + 1];
  __shared__ float bs[TILE][TILE + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * T + tx;
  float acc[PER][PER];
  for (int r = 0; r < PER; ++r)
    for (int c = 0; c < PER; ++c) acc[r][c] = 0.f;
  for (int c0 = 0; c0 < dim; c0 += TILE) {
    for (int l = tid; l < TILE * TILE; l += T * T) {
      const int r = l / TILE, c = l % TILE;
      const int ai = bi * TILE + r, bjr = bj * TILE + r, gc = c0 + c;
      as[r][c] = (ai < n && gc < dim) ? x[static_cast<size_t>(ai) * dim + gc] : 0.f;
      bs[r][c] = (bjr < n && gc < dim) ? x[static_cast<size_t>(bjr) * dim + gc] : 0.f;
    }
    __syncthreads();
    const int kmax = min(TILE, dim - c0);
    for (int kk = 0; kk < kmax; ++kk) {
      float a[PER], b[PER];
      for (int r = 0; r < PER; ++r) a[r] = as[ty + T * r][kk];
      for (int c = 0; c < PER; ++c) b[c] = bs[tx + T * c][kk];
      for (int r = 0; r < PER; ++r)
        for (int c = 0; c < PER; ++c) acc[r][c] = __fadd_rn(acc[r][c], __fmul_rn(a[r], b[c]));
    }
    __syncthreads();
  }
  for (int r = 0; r < PER; ++r)
    for (int c = 0; c < PER; ++c) {
      const int i = bi * TILE + ty + T * r, j = bj * TILE + tx + T * c;
      if (i < n && j < n) {
        g[static_cast<size_t>(i) * n + j] = acc[r][c];
        g[static_cast<size_t>(j) * n + i] = acc[r][c];
      }
    }
}

// The 2 x 2-per-thread tile with its shared-memory rows 16-byte aligned, read four depths at a time
// as float4 (a quarter of the load instructions). The four products are still added one by one in
// ascending c; depths past `dim` hold zeros, and adding a zero product leaves a sum unchanged (it is
// never -0), so whole groups of four are safe.
__global__ void GramKernelVec(const float* __restrict__ x, int n, int dim, float* __restrict__ g) {
  constexpr int TILE = 32, LD = 36;
  const int bi = blockIdx.y, bj = blockIdx.x;
  if (bj < bi) return;
  __shared__ __align__(16) float as[TILE * LD];
  __shared__ __align__(16) float bs[TILE * LD];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * 16 + tx;
  float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
  for (int c0 = 0; c0 < dim; c0 += TILE) {
    for (int l = tid; l < TILE * TILE; l += 256) {
      const int r = l / TILE, c = l % TILE;
      const int ai = bi * TILE + r, bjr = bj * TILE + r, gc = c0 + c;
      as[r * LD + c] = (ai < n && gc < dim) ? x[static_cast<size_t>(ai) * dim + gc] : 0.f;
      bs[r * LD + c] = (bjr < n && gc < dim) ? x[static_cast<size_t>(bjr) * dim + gc] : 0.f;
    }
    __syncthreads();
    for (int kk = 0; kk < TILE; kk += 4) {
      const float4 a0 = *reinterpret_cast<const float4*>(&as[ty * LD + kk]);
      const float4 a1 = *reinterpret_cast<const float4*>(&as[(ty + 16) * LD + kk]);
      const float4 b0 = *reinterpret_cast<const float4*>(&bs[tx * LD + kk]);
      const float4 b1 = *reinterpret_cast<const float4*>(&bs[(tx + 16) * LD + kk]);
      const float av0[4] = {a0.x, a0.y, a0.z, a0.w}, av1[4] = {a1.x, a1.y, a1.z, a1.w};
      const float bv0[4] = {b0.x, b0.y, b0.z, b0.w}, bv1[4] = {b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        acc[0][0] = __fadd_rn(acc[0][0], __fmul_rn(av0[q], bv0[q]));
        acc[0][1] = __fadd_rn(acc[0][1], __fmul_rn(av0[q], bv1[q]));
        acc[1][0] = __fadd_rn(acc[1][0], __fmul_rn(av1[q], bv0[q]));
        acc[1][1] = __fadd_rn(acc[1][1], __fmul_rn(av1[q], bv1[q]));
      }
    }
    __syncthreads();
  }
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 2; ++c) {
      const int i = bi * TILE + ty + 16 * r, j = bj * TILE + tx + 16 * c;
      if (i < n && j < n) {
        g[static_cast<size_t>(i) * n + j] = acc[r][c];
        g[static_cast<size_t>(j) * n + i] = acc[r][c];
      }
    }
}

template <int TILE, int PER>
void LaunchGramT(const float* x, int n, int dim, float* gram, cudaStream_t stream) {
  const int tiles = (n + TILE - 1) / TILE;
  GramKernel<TILE, PER><<<dim3(tiles, tiles), dim3(TILE / PER, TILE / PER), 0, stream>>>(x, n, dim, gram);
}

__global__ void DistKernel(const float* __restrict__ g, int n, float fdim, float* __restrict__ d) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y;
  if (j >= n) return;
  const float gij = g[static_cast<size_t>(i) * n + j];
  float d2 =
      __fsub_rn(__fadd_rn(g[static_cast<size_t>(i) * n + i], g[static_cast<size_t>(j) * n + j]), __fmul_rn(2.f, gij));
  d2 = d2 > 0.f ? d2 : 0.f;
  d[static_cast<size_t>(i) * n + j] = __fsqrt_rn(__fdiv_rn(d2, fdim));
}

// The reference's expDet, with round-to-nearest double intrinsics.
__device__ double ExpDet(double x) {
  if (!(x > -104.0)) return 0.0;
  const double inv_fact[14] = {
      1.0,        1.0,         1.0 / 2,      1.0 / 6,       1.0 / 24,       1.0 / 120,       1.0 / 720,
      1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  const double n = floor(__dadd_rn(__dmul_rn(x, 1.4426950408889634), 0.5));
  const double r = __dsub_rn(__dsub_rn(x, __dmul_rn(n, 0.6931471803691238)), __dmul_rn(n, 1.9082149292705877e-10));
  double p = inv_fact[13];
  for (int i = 12; i >= 0; --i) p = __dadd_rn(inv_fact[i], __dmul_rn(r, p));
  return ldexp(p, static_cast<int>(n));
}

// One block per row: bitonic sort of a copy of the row in shared memory gives t, the k-th smallest;
// then one thread adds D^2 over the k nearest (D < t, then the lowest-index ties at t) in index
// order, from the unsorted copy, as the reference does.
__global__ void DensityKernel(const float* __restrict__ d, int n, int padded, int k, float* __restrict__ rho) {
  extern __shared__ float shared[];
  float* s = shared;              // sorted
  float* orig = shared + padded;  // in index order
  const int i = blockIdx.x;
  for (int t = threadIdx.x; t < padded; t += blockDim.x) {
    const float v = t < n ? d[static_cast<size_t>(i) * n + t] : CUDART_INF_F;
    s[t] = v;
    orig[t] = v;
  }
  __syncthreads();
  for (int size = 2; size <= padded; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < padded / 2; t += blockDim.x) {
        const int lo = 2 * stride * (t / stride) + (t % stride), hi = lo + stride;
        const bool asc = (lo & size) == 0;
        const float a = s[lo], b = s[hi];
        if ((a > b) == asc) {
          s[lo] = b;
          s[hi] = a;
        }
      }
      __syncthreads();
    }
  }
  if (threadIdx.x == 0) {
    const float kth = s[k - 1];
    int need = k;
    for (int m = 0; m < k; ++m) need -= s[m] < kth;
    float sum = 0.f;
    for (int j = 0; j < n; ++j) {
      const float v = orig[j];
      if (v < kth || (v == kth && need > 0)) {
        need -= v == kth;
        sum = __fadd_rn(sum, __fmul_rn(v, v));
      }
    }
    const float mean = __fdiv_rn(sum, static_cast<float>(k));
    rho[i] = __double2float_rn(ExpDet(-static_cast<double>(mean)));
  }
}

// One block per row: delta (INF for the top point) and the row's maximum.
__global__ void DeltaKernel(const float* __restrict__ d, const float* __restrict__ rho, int n,
                            float* __restrict__ delta, float* __restrict__ row_max) {
  __shared__ float smin[256], smax[256];
  const int i = blockIdx.x;
  const float ri = rho[i];
  float best = CUDART_INF_F, mx = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = d[static_cast<size_t>(i) * n + j];
    const float rj = rho[j];
    if ((rj > ri || (rj == ri && j < i)) && v < best) best = v;
    mx = fmaxf(mx, v);
  }
  smin[threadIdx.x] = best;
  smax[threadIdx.x] = mx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      smin[threadIdx.x] = fminf(smin[threadIdx.x], smin[threadIdx.x + s]);
      smax[threadIdx.x] = fmaxf(smax[threadIdx.x], smax[threadIdx.x + s]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    delta[i] = smin[0];
    row_max[i] = smax[0];
  }
}

constexpr int kSelectThreads = 1024;

// Block-wide exclusive prefix sum of one value per thread (kSelectThreads threads).
__device__ int BlockExclusiveScan(int v, int* buf, int* total) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int off = 1; off < kSelectThreads; off <<= 1) {
    const int add = threadIdx.x >= off ? buf[threadIdx.x - off] : 0;
    __syncthreads();
    buf[threadIdx.x] += add;
    __syncthreads();
  }
  const int incl = buf[threadIdx.x];
  *total = buf[kSelectThreads - 1];
  __syncthreads();
  return incl - v;
}

// Whether patch i is a kept centre: a candidate (score over the threshold, or any patch in the
// fallback case) that fewer than `take` candidates beat (score descending, then index ascending).
__device__ bool IsKeptCenter(int i, const float* __restrict__ scores, int n, double threshold, bool use_all, int take,
                             int candidates) {
  const float si = scores[i];
  if (!(use_all || static_cast<double>(si) > threshold)) return false;
  if (take >= candidates) return true;
  int better = 0;
  for (int j = 0; j < n && better < take; ++j) {
    const float sj = scores[j];
    const bool cj = use_all || static_cast<double>(sj) > threshold;
    better += cj && (sj > si || (sj == si && j < i));
  }
  return better < take;
}

// One block: dmax, scores, the centres (threshold / fallback / cap, in index order).
__global__ void SelectKernel(const float* __restrict__ rho, const float* __restrict__ delta,
                             const float* __restrict__ row_max, int n, double threshold, int fallback, int max_tokens,
                             float* __restrict__ scores, int* __restrict__ centers, int* __restrict__ center_of,
                             int* __restrict__ count) {
  __shared__ float sred[kSelectThreads];
  __shared__ int sbuf[kSelectThreads];
  __shared__ int s_total;
  const int tid = threadIdx.x;
  float mx = 0.f;
  for (int i = tid; i < n; i += kSelectThreads) mx = fmaxf(mx, row_max[i]);
  sred[tid] = mx;
  __syncthreads();
  for (int s = kSelectThreads / 2; s > 0; s >>= 1) {
    if (tid < s) sred[tid] = fmaxf(sred[tid], sred[tid + s]);
    __syncthreads();
  }
  const float dmax = sred[0];
  // Each thread owns a contiguous chunk of indices so the scans keep index order.
  const int chunk = (n + kSelectThreads - 1) / kSelectThreads;
  const int begin = min(n, tid * chunk), end = min(n, begin + chunk);
  int passing = 0;
  for (int i = begin; i < end; ++i) {
    const float dl = delta[i];
    const float sc = __fmul_rn(rho[i], dl == CUDART_INF_F ? dmax : dl);
    scores[i] = sc;
    center_of[i] = -1;
    passing += static_cast<double>(sc) > threshold;
  }
  __syncthreads();
  int total_passing;
  BlockExclusiveScan(passing, sbuf, &s_total);
  total_passing = s_total;
  const bool use_all = total_passing == 0;  // fallback: every patch is a candidate
  const int candidates = use_all ? n : total_passing;
  int take = use_all ? min(fallback, n) : total_passing;
  if (max_tokens > 0) take = min(take, max_tokens);
  // Keep candidate i when fewer than `take` candidates beat it (score desc, index asc).
  int kept = 0;
  for (int i = begin; i < end; ++i) {
    kept += IsKeptCenter(i, scores, n, threshold, use_all, take, candidates);
  }
  const int offset = BlockExclusiveScan(kept, sbuf, &s_total);
  int pos = offset;
  for (int i = begin; i < end; ++i) {
    if (IsKeptCenter(i, scores, n, threshold, use_all, take, candidates)) {
      centers[pos] = i;
      center_of[i] = pos;
      ++pos;
    }
  }
  if (tid == 0) *count = s_total;
}

__global__ void LabelKernel(const float* __restrict__ d, int n, const int* __restrict__ centers,
                            const int* __restrict__ center_of, const int* __restrict__ count,
                            int* __restrict__ labels) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (center_of[i] >= 0) {
    labels[i] = center_of[i];
    return;
  }
  const int L = *count;
  const float* row = d + static_cast<size_t>(i) * n;
  int best = 0;
  float bd = row[centers[0]];
  for (int m = 1; m < L; ++m) {
    const float v = row[centers[m]];
    if (v < bd) {
      bd = v;
      best = m;
    }
  }
  labels[i] = best;
}

}  // namespace

void LaunchGram(const float* x, int n, int dim, float* gram, cudaStream_t stream) {
  LaunchGramVariant(0, x, n, dim, gram, stream);
}

int GramVariantCount() { return 5; }

const char* LaunchGramVariant(int variant, const float* x, int n, int dim, float* gram, cudaStream_t stream) {
  switch (variant) {
    case 1:
      LaunchGramT<16, 1>(x, n, dim, gram, stream);
      return "16x16 tile, 1 output/thread";
    case 2:
      LaunchGramT<32, 1>(x, n, dim, gram, stream);
      return "32x32 tile, 1 output/thread";
    case 3:
      LaunchGramT<32, 4>(x, n, dim, gram, stream);
      return "32x32 tile, 4x4 outputs/thread";
    case 4:
      LaunchGramT<32, 2>(x, n, dim, gram, stream);
      return "32x32 tile, 2x2 outputs/thread, scalar loads";
    default: {
      const int tiles = (n + 31) / 32;
      GramKernelVec<<<dim3(tiles, tiles), dim3(16, 16), 0, stream>>>(x, n, dim, gram);
      return "32x32 tile, 2x2 outputs/thread, float4 shared loads";
    }
  }
}

void LaunchDistances(const float* gram, int n, int dim, float* dist, cudaStream_t stream) {
  DistKernel<<<dim3((n + 255) / 256, n), 256, 0, stream>>>(gram, n, static_cast<float>(dim), dist);
}

void LaunchDensity(const float* dist, int n, int k, float* rho, cudaStream_t stream) {
  int padded = 1;
  while (padded < n) padded <<= 1;
  const int threads = padded / 2 < 32 ? 32 : (padded / 2 > 1024 ? 1024 : padded / 2);
  DensityKernel<<<n, threads, 2 * padded * sizeof(float), stream>>>(dist, n, padded, k, rho);
}

void LaunchSelect(const float* dist, const float* rho, int n, double threshold, int fallback, int max_tokens,
                  float* delta, float* row_max, float* scores, int* centers, int* center_of, int* count, int* labels,
                  cudaStream_t stream) {
  DeltaKernel<<<n, 256, 0, stream>>>(dist, rho, n, delta, row_max);
  SelectKernel<<<1, kSelectThreads, 0, stream>>>(rho, delta, row_max, n, threshold, fallback, max_tokens, scores,
                                                 centers, center_of, count);
  LabelKernel<<<(n + 255) / 256, 256, 0, stream>>>(dist, n, centers, center_of, count, labels);
}

}  // namespace setokim::cuda
