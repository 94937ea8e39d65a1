// Steps 4 to 6 of SETOK.md's clustering once the distances, densities and deltas are known, shared by
// DpcKnn (from scratch) and ClusterCache (frame by frame), so both finish a frame the same way.
// Thread safety: pure functions of their arguments; FinishClustering uses all cores when `parallel`.
#pragma once
#include <cstdint>
#include <vector>

#include "setok/cluster_types.h"
#include "setok/fp_order.h"

namespace setokim {

// Step 3's last part: rho = exp(-(sum / k)) from the index-order sum of the k nearest squares.
inline float DensityFromSum(float sum, int k) {
  const float mean = sum / static_cast<float>(k);
  return static_cast<float>(fp::ExpDet(-static_cast<double>(mean)));
}

// Step 4's order: patches by rho descending, then index ascending (the reference's tie rule);
// rank[order[r]] = r. order[0] is the one patch with no better-ranked patch.
void RankByDensity(const std::vector<float>& rho, std::vector<int32_t>& order, std::vector<int32_t>& rank);

// Steps 4 (scores), 5 and 6 from the n x n distances, rho and each patch's delta (the top patch's
// already set to the largest distance): score = rho * delta, the centres, the nearest-centre labels.
ClusterResult FinishClustering(const float* dist, const std::vector<float>& rho, const std::vector<float>& delta,
                               const ClusterParams& p, bool parallel);

}  // namespace setokim
