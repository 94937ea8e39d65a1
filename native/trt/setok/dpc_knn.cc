#include "setok/dpc_knn.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "setok/fp_order.h"
#include "setok/gram_cpu.h"
#include "setok/parallel.h"

namespace setokim {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerTask = 16;

int Tasks(int n, int per) { return (n + per - 1) / per; }

}  // namespace

DpcKnn::DpcKnn(const ClusterParams& params) : params_(params) {
  ValidateClusterParams(params_, static_cast<size_t>(params_.n) * params_.dim);
}

ClusterResult DpcKnn::Cluster(const float* features) {
  CheckFinite(features, params_.n, params_.dim);
  ComputeGram(features, params_.n, params_.dim, gram_);
  return ClusterFromGram(gram_);
}

void DpcKnn::Distances(std::vector<float>& gram, std::vector<float>& dist) const {
  const int n = params_.n;
  const bool par = static_cast<double>(n) * n > 1e5;  // smaller rows finish before threads start
  const int ld = GramStride(n);
  // Mirror the upper triangle into the lower one, tile by tile (cache friendly).
  const int tiles = Tasks(n, kTile);
  ParallelFor(tiles, [&](int bi) {
    const int i0 = bi * kTile, i1 = std::min(n, i0 + kTile);
    for (int bj = 0; bj <= bi; ++bj) {
      const int j0 = bj * kTile, j1 = std::min(n, j0 + kTile);
      for (int i = i0; i < i1; ++i)
        for (int j = j0; j < std::min(j1, i); ++j) gram[static_cast<size_t>(i) * ld + j] = gram[static_cast<size_t>(j) * ld + i];
    }
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

ClusterResult DpcKnn::ClusterFromGram(std::vector<float>& gram) {
  const int n = params_.n;
  const bool par = static_cast<double>(n) * n > 1e5;
  const int k = params_.k;
  Distances(gram, dist_);
  const std::vector<float>& dist = dist_;
  ClusterResult res;
  res.rho.resize(n);
  // Step 3: density over the k nearest (D < t, then the lowest-index ties at t), summed in index order.
  ParallelFor(Tasks(n, kRowsPerTask), [&](int t) {
    for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
      const float* d = dist.data() + static_cast<size_t>(i) * n;
      const float kth = KthSmallest(d, n, k);
      int need = k;
      for (int j = 0; j < n; ++j) need -= d[j] < kth;
      float sum = 0.0f;
      for (int j = 0; j < n; ++j) {
        const float v = d[j];
        if (v < kth || (v == kth && need > 0)) {
          need -= v == kth;
          sum += fp::Opaque(v * v);
        }
      }
      const float mean = sum / static_cast<float>(k);
      res.rho[i] = static_cast<float>(fp::ExpDet(-static_cast<double>(mean)));
    }
  }, n >= 128);  // a few microseconds per row: worth a second thread early
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
      const float* d = dist.data() + static_cast<size_t>(i) * n;
      const int ri = rank[i];
      float best = INFINITY, mx = 0.0f;
      for (int j = 0; j < n; ++j) {
        const float v = d[j];
        best = (rank[j] < ri && v < best) ? v : best;
        mx = v > mx ? v : mx;
      }
      delta[i] = best;
      row_max[i] = mx;
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
