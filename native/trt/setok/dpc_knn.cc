#include "setok/dpc_knn.h"

#include <algorithm>
#include <cmath>

#include "setok/dpc_steps.h"
#include "setok/gram_cpu.h"
#include "setok/parallel.h"

namespace setokim {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerTask = 16;

int Tasks(int n, int per) { return (n + per - 1) / per; }

// Whether an n x n step is worth the pool's helper threads. Waking one costs only microseconds, but
// on a shared machine the other core is often busy, and a helper that is preempted holding an item
// stalls the caller: at n = 256 (~20-100 us per step) one thread was faster under load.
#ifndef SETOKIM_PARALLEL_CELLS
#define SETOKIM_PARALLEL_CELLS 1e5
#endif
bool WorthThreads(int n) { return static_cast<double>(n) * n >= SETOKIM_PARALLEL_CELLS; }

}  // namespace

DpcKnn::DpcKnn(const ClusterParams& params) : params_(params) {
  ValidateClusterParams(params_, static_cast<size_t>(params_.n) * params_.dim);
}

ClusterResult DpcKnn::Cluster(const float* features) {
  const int n = params_.n;
  CheckFinite(features, n, params_.dim);
  ComputeGram(features, n, params_.dim, gram_);
  if (GramStride(n) != n) return ClusterFromGram(gram_);
  // Nobody needs G afterwards: turn it into D in place (one n x n buffer in cache, not two).
  DistancesInPlace(gram_);
  gram_.swap(state_.dist);
  return FromDistances();
}

// D over the upper triangle of G (row i from j = i, in place: each entry reads only its own G and
// the diagonal, copied first), then mirrored: D is symmetric bit for bit, since gii + gjj == gjj + gii.
void DpcKnn::DistancesInPlace(std::vector<float>& g) {
  const int n = params_.n;
  const bool par = WorthThreads(n);
  std::vector<float>& diag = state_.diag;
  diag.resize(n);
  for (int j = 0; j < n; ++j) diag[j] = g[static_cast<size_t>(j) * n + j];
  const float fdim = static_cast<float>(params_.dim);
  ParallelFor(
      Tasks(n, kRowsPerTask),
      [&](int t) {
        for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
          float* row = g.data() + static_cast<size_t>(i) * n;
          DistanceRow(diag[i], diag.data() + i, row + i, fdim, n - i, row + i);
        }
      },
      par);
  ParallelFor(
      Tasks(n, kTile), [&](int bi) { MirrorLower(g.data(), n, bi * kTile, std::min(n, (bi + 1) * kTile)); }, par);
}

void DpcKnn::Distances(std::vector<float>& gram, std::vector<float>& dist) const {
  const int n = params_.n;
  const bool par = WorthThreads(n);
  const int ld = GramStride(n);
  // Mirror the upper triangle into the lower one, 8 x 8 blocks at a time.
  const int tiles = Tasks(n, kTile);
  ParallelFor(
      tiles, [&](int bi) { MirrorLower(gram.data(), ld, bi * kTile, std::min(n, (bi + 1) * kTile)); }, par);
  dist.resize(static_cast<size_t>(n) * n);
  std::vector<float> diag(n);
  for (int j = 0; j < n; ++j) diag[j] = gram[static_cast<size_t>(j) * ld + j];
  const float fdim = static_cast<float>(params_.dim);
  ParallelFor(
      Tasks(n, kRowsPerTask),
      [&](int t) {
        for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
          DistanceRow(diag[i], diag.data(), gram.data() + static_cast<size_t>(i) * ld, fdim, n,
                      dist.data() + static_cast<size_t>(i) * n);
        }
      },
      par);
}

// Step 3 for rows [i0, i0 + rows), rows <= kDensityBlock: density over the k nearest (D < t, then
// the lowest-index ties at t), summed in index order; keeps t in state_.kth and rho in state_.rho.
void DpcKnn::Density(int i0, int rows, bool hinted) {
  const int n = params_.n, k = params_.k;
  float sums[kDensityBlock];
  float* kth = state_.kth.data() + i0;
  setokim::DensityRows(state_.dist.data() + static_cast<size_t>(i0) * n, n, k, rows, kth, sums, hinted ? kth : nullptr);
  for (int r = 0; r < rows; ++r) state_.rho[i0 + r] = DensityFromSum(sums[r], k);
}

ClusterResult DpcKnn::ClusterFromGram(std::vector<float>& gram) {
  Distances(gram, state_.dist);
  const int n = params_.n, ld = GramStride(n);
  state_.diag.resize(n);
  for (int j = 0; j < n; ++j) state_.diag[j] = gram[static_cast<size_t>(j) * ld + j];
  return FromDistances();
}

// Steps 3 to 6 from state_.dist.
ClusterResult DpcKnn::FromDistances() {
  const int n = params_.n;
  const bool par = WorthThreads(n);
  DpcState& st = state_;
  st.kth.resize(n);
  st.rho.resize(n);
  ParallelFor(
      Tasks(n, kRowsPerTask),
      [&](int t) {
        const int end = std::min(n, (t + 1) * kRowsPerTask);
        for (int i = t * kRowsPerTask; i < end; i += kDensityBlock) Density(i, std::min(kDensityBlock, end - i));
      },
      par);
  // Step 4: delta = min D to a better-ranked patch; the top patch takes the largest distance.
  std::vector<int32_t> order, rank;
  RankByDensity(st.rho, order, rank);
  st.row_max.resize(n);
  std::vector<float> delta(n);
  ParallelFor(
      Tasks(n, kRowsPerTask),
      [&](int t) {
        for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
          DeltaRow(st.dist.data() + static_cast<size_t>(i) * n, rank.data(), rank[i], n, &delta[i], &st.row_max[i]);
        }
      },
      par);
  delta[order[0]] = *std::max_element(st.row_max.begin(), st.row_max.end());
  return FinishClustering(st.dist.data(), st.rho, delta, params_, par);
}

}  // namespace setokim
