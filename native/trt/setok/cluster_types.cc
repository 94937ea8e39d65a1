#include "setok/cluster_types.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>

namespace setokim {

void ValidateClusterParams(const ClusterParams& p, size_t count) {
  if (p.dim < 1) throw BadInput("cluster: dim must be at least 1, got " + std::to_string(p.dim));
  if (p.n < 1) throw BadInput("cluster: n must be at least 1, got " + std::to_string(p.n));
  if (p.n > kMaxClusterPatches) {
    throw BadInput("cluster: n = " + std::to_string(p.n) + " patches is above the limit of " +
                   std::to_string(kMaxClusterPatches) + " (the n x n distance matrices would not fit in memory)");
  }
  if (p.k < 1 || p.k > p.n) {
    throw BadInput("cluster: k = " + std::to_string(p.k) + " must be between 1 and n = " + std::to_string(p.n) +
                   " (k nearest neighbours need at least k patches)");
  }
  if (p.fallback < 1) throw BadInput("cluster: fallback must be at least 1");
  if (p.maxTokens < 0) throw BadInput("cluster: maxTokens must be 0 (no cap) or positive");
  if (!std::isfinite(p.threshold)) throw BadInput("cluster: threshold must be a finite number");
  if (count != static_cast<size_t>(p.n) * static_cast<size_t>(p.dim)) {
    throw BadInput("cluster: features has " + std::to_string(count) +
                   " values but n x dim = " + std::to_string(static_cast<size_t>(p.n) * p.dim));
  }
}

void CheckFinite(const float* x, int n, int dim) {
  const size_t total = static_cast<size_t>(n) * dim;
  // Exponent bits all ones = Inf or NaN; an integer test the compiler vectorises (isfinite is not).
  uint32_t bad = 0;
  for (size_t i = 0; i < total; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, sizeof u);
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  if (!bad) return;
  for (size_t i = 0; i < total; ++i) {
    if (!std::isfinite(x[i])) {
      throw BadInput("cluster: features[" + std::to_string(i / dim) + "][" + std::to_string(i % dim) + "] is " +
                     (std::isnan(x[i]) ? "NaN" : "Inf") + "; features must be finite (check the encoder output)");
    }
  }
}

std::vector<int32_t> SelectCenters(const std::vector<float>& scores, const ClusterParams& p) {
  const int n = static_cast<int>(scores.size());
  auto better = [&](int32_t a, int32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  std::vector<int32_t> picked;
  for (int i = 0; i < n; ++i)
    if (static_cast<double>(scores[i]) > p.threshold) picked.push_back(i);
  if (picked.empty()) {
    std::vector<int32_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    const int take = std::min(p.fallback, n);
    std::partial_sort(all.begin(), all.begin() + take, all.end(), better);
    picked.assign(all.begin(), all.begin() + take);
  }
  if (p.maxTokens > 0 && static_cast<int>(picked.size()) > p.maxTokens) {
    std::partial_sort(picked.begin(), picked.begin() + p.maxTokens, picked.end(), better);
    picked.resize(p.maxTokens);
  }
  std::sort(picked.begin(), picked.end());
  return picked;
}

}  // namespace setokim
