// DPC-KNN clustering on the CPU (SETOK.md "The clustering"), bit-identical to the TypeScript
// reference (src/setok/reference.ts defines the float32 order; gram_cpu.h follows it).
// Thread safety: a DpcKnn holds scratch buffers, so one instance serves one thread at a time;
// separate instances may run concurrently. Each call uses all cores internally.
#pragma once
#include <vector>

#include "setok/cluster_types.h"

namespace setokim {

class DpcKnn {
 public:
  // Throws BadInput when the parameters are unusable (features are checked per call).
  explicit DpcKnn(const ClusterParams& params);

  // Clusters n x dim row-major features. Throws BadInput on NaN/Inf.
  ClusterResult Cluster(const float* features);

  // Steps 2-6 from a Gram matrix with stride GramStride(n) whose upper triangle is filled
  // (the lower one is overwritten). Used by the streaming cache.
  ClusterResult ClusterFromGram(std::vector<float>& gram);

  // Step 2 only, exposed for tests: the full n x n distance matrix from a Gram matrix.
  void Distances(std::vector<float>& gram, std::vector<float>& dist) const;

  const ClusterParams& params() const { return params_; }

 private:
  ClusterParams params_;
  std::vector<float> gram_;
  std::vector<float> dist_;
};

}  // namespace setokim
