// DPC-KNN clustering on the CPU (docs/SETOK.md "The clustering"), bit-identical to the TypeScript
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
  // (the lower one is overwritten, so afterwards the whole matrix is current). Keeps the distances
  // and densities for UpdateFromGram.
  ClusterResult ClusterFromGram(std::vector<float>& gram);

  // The same result after only `rows` changed: `gram` must be the full (both triangles) Gram
  // matrix of the new features, equal to the previous one outside those rows and columns, and the
  // previous call must have been on this instance. Recomputes the distance rows and columns of
  // `rows` and the density only of rows whose k nearest may have changed; bit-identical to
  // ClusterFromGram. Throws std::logic_error without a previous full call.
  ClusterResult UpdateFromGram(const std::vector<float>& gram, const std::vector<int>& rows);

  // Step 2 only, exposed for tests: the full n x n distance matrix from a Gram matrix.
  void Distances(std::vector<float>& gram, std::vector<float>& dist) const;

  const ClusterParams& params() const { return params_; }

 private:
  void DensityRows(int i0, int rows);  // step 3 into kth_ and rho_
  void DistancesInPlace(std::vector<float>& gram) const;  // needs GramStride(n) == n
  ClusterResult FromDistances();                           // steps 3-6 from dist_
  ClusterResult FinishFromDensity();

  ClusterParams params_;
  std::vector<float> gram_;
  std::vector<float> dist_;  // n x n, current after every call
  std::vector<float> kth_;   // per row: the k-th smallest distance
  std::vector<float> rho_;
  bool have_state_ = false;
};

}  // namespace setokim
