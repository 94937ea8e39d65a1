#include "setok/cluster_cache.h"

#include <cstring>

#include "setok/gram_cpu.h"

namespace setokim {

ClusterCache::ClusterCache(const ClusterParams& params) : dpc_(params) {}

ClusterResult ClusterCache::Push(const float* features, int* changed_rows) {
  const ClusterParams& p = dpc_.params();
  CheckFinite(features, p.n, p.dim);
  const size_t total = static_cast<size_t>(p.n) * p.dim;
  int changed = p.n;
  if (!valid_) {
    ComputeGram(features, p.n, p.dim, gram_);
  } else {
    std::vector<int> rows;
    for (int i = 0; i < p.n; ++i) {
      const size_t off = static_cast<size_t>(i) * p.dim;
      if (std::memcmp(features + off, prev_.data() + off, sizeof(float) * p.dim) != 0) rows.push_back(i);
    }
    changed = static_cast<int>(rows.size());
    // Past half the rows a full recompute (triangle only) is cheaper than rows x n.
    if (changed * 2 > p.n) {
      ComputeGram(features, p.n, p.dim, gram_);
    } else {
      UpdateGramRows(features, p.n, p.dim, rows, gram_);
    }
  }
  prev_.assign(features, features + total);
  valid_ = true;
  if (changed_rows) *changed_rows = changed;
  // The upper triangle is always current; ClusterFromGram mirrors it into the lower one in place.
  return dpc_.ClusterFromGram(gram_);
}

void ClusterCache::Reset() {
  valid_ = false;
  std::vector<float>().swap(prev_);
  std::vector<float>().swap(gram_);
}

}  // namespace setokim
