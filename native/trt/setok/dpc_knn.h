// DPC-KNN clustering on the CPU (docs/SETOK.md "The clustering"), bit-identical to the TypeScript
// reference (src/setok/reference.ts defines the float32 order; gram_cpu.h follows it).
// Thread safety: a DpcKnn holds scratch buffers, so one instance serves one thread at a time;
// separate instances may run concurrently. Each call uses all cores internally.
#pragma once
#include <vector>

#include "setok/cluster_types.h"

namespace setokim {

// What a clustering leaves behind, kept so a stream (ClusterCache) can update it frame by frame.
struct DpcState {
  std::vector<float> dist;     // n x n distances D
  std::vector<float> diag;     // the Gram diagonal g_ii
  std::vector<float> kth;      // per row: t, the k-th smallest distance
  std::vector<float> rho;      // per row: the density
  std::vector<float> row_max;  // per row: the largest distance (their max is the top patch's delta)
};

class DpcKnn {
 public:
  // Throws BadInput when the parameters are unusable (features are checked per call).
  explicit DpcKnn(const ClusterParams& params);

  // Clusters n x dim row-major features. Throws BadInput on NaN/Inf.
  ClusterResult Cluster(const float* features);

  // Steps 2-6 from a Gram matrix with stride GramStride(n) whose upper triangle is filled
  // (the lower one is overwritten).
  ClusterResult ClusterFromGram(std::vector<float>& gram);

  // Step 2 only, exposed for tests: the full n x n distance matrix from a Gram matrix.
  void Distances(std::vector<float>& gram, std::vector<float>& dist) const;

  const ClusterParams& params() const { return params_; }

  // The state of the last Cluster or ClusterFromGram call (same thread as the calls). The owner
  // may change it (ClusterCache does); the next call overwrites it.
  DpcState& state() { return state_; }

  // Step 3 for rows [i0, i0 + rows), rows <= kDensityBlock, from state().dist into state().kth and
  // state().rho. Calls for disjoint rows may run concurrently. `hinted`: state().kth still holds
  // each row's t of the previous frame, a starting point for the selection (same result, faster).
  void Density(int i0, int rows, bool hinted = false);

 private:
  void DistancesInPlace(std::vector<float>& gram);  // needs GramStride(n) == n
  ClusterResult FromDistances();                    // steps 3-6 from state_.dist

  ClusterParams params_;
  std::vector<float> gram_;
  DpcState state_;
};

}  // namespace setokim
