#include "setok/dpc_knn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "setok/fp_order.h"
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
  gram_.swap(dist_);
  return FromDistances();
}

// D over the upper triangle of G (row i from j = i, in place: each entry reads only its own G and
// the diagonal, copied first), then mirrored: D is symmetric bit for bit, since gii + gjj == gjj + gii.
void DpcKnn::DistancesInPlace(std::vector<float>& g) const {
  const int n = params_.n;
  const bool par = WorthThreads(n);
  std::vector<float> diag(n);
  for (int j = 0; j < n; ++j) diag[j] = g[static_cast<size_t>(j) * n + j];
  const float fdim = static_cast<float>(params_.dim);
  ParallelFor(Tasks(n, kRowsPerTask), [&](int t) {
    for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
      float* row = g.data() + static_cast<size_t>(i) * n;
      DistanceRow(diag[i], diag.data() + i, row + i, fdim, n - i, row + i);
    }
  }, par);
  ParallelFor(Tasks(n, kTile), [&](int bi) {
    MirrorLower(g.data(), n, bi * kTile, std::min(n, (bi + 1) * kTile));
  }, par);
}

void DpcKnn::Distances(std::vector<float>& gram, std::vector<float>& dist) const {
  const int n = params_.n;
  const bool par = WorthThreads(n);
  const int ld = GramStride(n);
  // Mirror the upper triangle into the lower one, 8 x 8 blocks at a time.
  const int tiles = Tasks(n, kTile);
  ParallelFor(tiles, [&](int bi) {
    MirrorLower(gram.data(), ld, bi * kTile, std::min(n, (bi + 1) * kTile));
  }, par);
  dist.resize(static_cast<size_t>(n) * n);
  std::vector<float> diag(n);
  for (int j = 0; j < n; ++j) diag[j] = gram[static_cast<size_t>(j) * ld + j];
  const float fdim = static_cast<float>(params_.dim);
  ParallelFor(Tasks(n, kRowsPerTask), [&](int t) {
    for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
      DistanceRow(diag[i], diag.data(), gram.data() + static_cast<size_t>(i) * ld, fdim, n,
                  dist.data() + static_cast<size_t>(i) * n);
    }
  }, par);
}

// Step 3 for rows [i0, i0 + rows), rows <= kDensityBlock: density over the k nearest (D < t, then
// the lowest-index ties at t), summed in index order; keeps t in kth_ and rho in rho_.
void DpcKnn::DensityRows(int i0, int rows) {
  const int n = params_.n, k = params_.k;
  float sums[kDensityBlock];
  setokim::DensityRows(dist_.data() + static_cast<size_t>(i0) * n, n, k, rows, kth_.data() + i0, sums);
  for (int r = 0; r < rows; ++r) {
    const float mean = sums[r] / static_cast<float>(k);
    rho_[i0 + r] = static_cast<float>(fp::ExpDet(-static_cast<double>(mean)));
  }
}

ClusterResult DpcKnn::ClusterFromGram(std::vector<float>& gram) {
  Distances(gram, dist_);
  return FromDistances();
}

ClusterResult DpcKnn::FromDistances() {
  const int n = params_.n;
  kth_.resize(n);
  rho_.resize(n);
  ParallelFor(Tasks(n, kRowsPerTask), [&](int t) {
    const int end = std::min(n, (t + 1) * kRowsPerTask);
    for (int i = t * kRowsPerTask; i < end; i += kDensityBlock) DensityRows(i, std::min(kDensityBlock, end - i));
  }, WorthThreads(n));
  have_state_ = true;
  return FinishFromDensity();
}

ClusterResult DpcKnn::UpdateFromGram(const std::vector<float>& gram, const std::vector<int>& rows) {
  if (!have_state_) throw std::logic_error("DpcKnn::UpdateFromGram before a full ClusterFromGram");
  const int n = params_.n;
  const int m = static_cast<int>(rows.size());
  const int ld = GramStride(n);
  const bool par = static_cast<double>(m) * n > 2e4;
  // Old values of the changed columns (= old rows, D is symmetric), then the new rows and columns.
  std::vector<float> old(static_cast<size_t>(m) * n);
  for (int r = 0; r < m; ++r) std::memcpy(old.data() + static_cast<size_t>(r) * n, dist_.data() + static_cast<size_t>(rows[r]) * n, sizeof(float) * n);
  std::vector<float> diag(n);
  for (int j = 0; j < n; ++j) diag[j] = gram[static_cast<size_t>(j) * ld + j];
  const float fdim = static_cast<float>(params_.dim);
  ParallelFor(m, [&](int r) {
    const int i = rows[r];
    DistanceRow(diag[i], diag.data(), gram.data() + static_cast<size_t>(i) * ld, fdim, n, dist_.data() + static_cast<size_t>(i) * n);
  }, par);
  for (int r = 0; r < m; ++r) {
    const int i = rows[r];
    const float* src = dist_.data() + static_cast<size_t>(i) * n;
    for (int j = 0; j < n; ++j) dist_[static_cast<size_t>(j) * n + i] = src[j];
  }
  // A row keeps its density when every changed entry was and stays strictly above its old t: then
  // the k nearest, t and the sum are exactly what they were.
  std::vector<char> changed(n, 0);
  for (int i : rows) changed[i] = 1;
  ParallelFor(Tasks(n, kRowsPerTask), [&](int t) {
    for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
      bool keep = !changed[i];
      const float kth = kth_[i];
      const float* d = dist_.data() + static_cast<size_t>(i) * n;
      for (int r = 0; r < m && keep; ++r) keep = old[static_cast<size_t>(r) * n + i] > kth && d[rows[r]] > kth;
      if (!keep) DensityRows(i, 1);
    }
  }, WorthThreads(n));
  return FinishFromDensity();
}

// Steps 4 to 6 from dist_ and rho_.
ClusterResult DpcKnn::FinishFromDensity() {
  const int n = params_.n;
  const bool par = WorthThreads(n);
  const std::vector<float>& dist = dist_;
  ClusterResult res;
  res.rho = rho_;
  // Step 4: rank by (rho descending, index ascending); delta = min D to a better-ranked point.
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return res.rho[a] > res.rho[b] || (res.rho[a] == res.rho[b] && a < b);
  });
  std::vector<int32_t> rank(n);
  for (int r = 0; r < n; ++r) rank[order[r]] = r;
  std::vector<float> row_max(n);
  res.scores.resize(n);
  std::vector<float> delta(n);
  ParallelFor(Tasks(n, kRowsPerTask), [&](int t) {
    for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
      DeltaRow(dist.data() + static_cast<size_t>(i) * n, rank.data(), rank[i], n, &delta[i], &row_max[i]);
    }
  }, par);
  const float dmax = n > 0 ? *std::max_element(row_max.begin(), row_max.end()) : 0.0f;
  delta[order[0]] = dmax;
  for (int i = 0; i < n; ++i) res.scores[i] = res.rho[i] * delta[i];
  // Step 5 and 6.
  res.centers = SelectCenters(res.scores, params_);
  res.labels.assign(n, 0);
  const int L = static_cast<int>(res.centers.size());
  ParallelFor(Tasks(n, kRowsPerTask * 4), [&](int t) {
    for (int i = t * kRowsPerTask * 4; i < std::min(n, (t + 1) * kRowsPerTask * 4); ++i) {
      const float* d = dist.data() + static_cast<size_t>(i) * n;
      int best = 0;
      float bd = d[res.centers[0]];
      for (int m = 1; m < L; ++m) {
        const float v = d[res.centers[m]];
        if (v < bd) {
          bd = v;
          best = m;
        }
      }
      res.labels[i] = best;
    }
  }, par);
  for (int m = 0; m < L; ++m) res.labels[res.centers[m]] = m;
  return res;
}

}  // namespace setokim
