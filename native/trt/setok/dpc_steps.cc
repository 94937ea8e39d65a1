#include "setok/dpc_steps.h"

#include <algorithm>
#include <numeric>

#include "setok/parallel.h"

namespace setokim {

void RankByDensity(const std::vector<float>& rho, std::vector<int32_t>& order, std::vector<int32_t>& rank) {
  const int n = static_cast<int>(rho.size());
  order.resize(n);
  rank.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return rho[a] > rho[b] || (rho[a] == rho[b] && a < b); });
  for (int r = 0; r < n; ++r) rank[order[r]] = r;
}

ClusterResult FinishClustering(const float* dist, const std::vector<float>& rho, const std::vector<float>& delta,
                               const ClusterParams& p, bool parallel) {
  const int n = p.n;
  constexpr int kRowsPerTask = 64;
  ClusterResult res;
  res.rho = rho;
  res.scores.resize(n);
  for (int i = 0; i < n; ++i) res.scores[i] = rho[i] * delta[i];
  res.centers = SelectCenters(res.scores, p);
  res.labels.assign(n, 0);
  const int L = static_cast<int>(res.centers.size());
  ParallelFor((n + kRowsPerTask - 1) / kRowsPerTask,
              [&](int t) {
                for (int i = t * kRowsPerTask; i < std::min(n, (t + 1) * kRowsPerTask); ++i) {
                  const float* d = dist + static_cast<size_t>(i) * n;
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
              },
              parallel);
  for (int m = 0; m < L; ++m) res.labels[res.centers[m]] = m;
  return res;
}

}  // namespace setokim
