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
  bool incremental = false;
  std::vector<int> rows;
  if (!valid_) {
    ComputeGram(features, p.n, p.dim, gram_);
  } else {
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
      incremental = true;
    }
  }
  prev_.assign(features, features + total);
  if (changed_rows) *changed_rows = changed;
  // After a full ComputeGram only the upper triangle is current and ClusterFromGram mirrors it in
  // place; UpdateGramRows writes both triangles of the changed rows, so the matrix stays whole.
  valid_ = false;  // until the clustering succeeded (an exception leaves a full recompute next)
  ClusterResult r = incremental ? dpc_.UpdateFromGram(gram_, rows) : dpc_.ClusterFromGram(gram_);
  valid_ = true;
  return r;
}

void ClusterCache::Reset() {
  valid_ = false;
  std::vector<float>().swap(prev_);
  std::vector<float>().swap(gram_);
}

}  // namespace setokim
