#include "setok/dpc_steps.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>

#include "setok/parallel.h"

namespace setokim {

void RankByDensity(const std::vector<float>& rho, std::vector<int32_t>& order, std::vector<int32_t>& rank) {
  const int n = static_cast<int>(rho.size());
  order.resize(n);
  rank.resize(n);
  // rho = exp(-mean) lies in [+0, 1]: non-negative floats order like their bit patterns, so
  // 0x7f800000 - bits (31 bits) ascending is rho descending. A stable radix sort over it (11, 11 and
  // 9 bits) from index order leaves equal rho in index order: the comparison sort's order, without
  // its ~n log n indirect comparisons.
  thread_local std::vector<uint32_t> key, key2;
  thread_local std::vector<int32_t> tmp;
  key.resize(n);
  key2.resize(n);
  tmp.resize(n);
  bool sortable = true;
  for (int i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &rho[i], sizeof bits);
    sortable &= bits <= 0x7f800000u;  // +0 .. +Inf (no sign bit, no NaN)
    key[i] = 0x7f800000u - bits;
    order[i] = i;
  }
  if (!sortable) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return rho[a] > rho[b] || (rho[a] == rho[b] && a < b); });
  } else {
    int32_t* src = order.data();
    int32_t* dst = tmp.data();
    uint32_t* ks = key.data();
    uint32_t* kd = key2.data();
    for (int shift = 0; shift < 31; shift += 11) {
      uint32_t count[2049] = {};
      for (int i = 0; i < n; ++i) ++count[((ks[i] >> shift) & 2047u) + 1];
      for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
      for (int i = 0; i < n; ++i) {
        const uint32_t pos = count[(ks[i] >> shift) & 2047u]++;
        dst[pos] = src[i];
        kd[pos] = ks[i];
      }
      std::swap(src, dst);
      std::swap(ks, kd);
    }
    if (src != order.data()) std::memcpy(order.data(), src, sizeof(int32_t) * n);
  }
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
