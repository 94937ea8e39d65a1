// Streaming clustering over the frames of one camera: keeps the previous frame's features, its
// Gram and distance matrices and per-row densities, and recomputes only the Gram and distance rows
// and columns of patches whose features changed (bitwise), plus the densities whose k nearest may
// have changed (DpcKnn::UpdateFromGram). Every entry is computed independently in the reference
// order, so a frame's result equals clustering it alone, bit for bit. Memory: one frame, two n x n
// matrices and a few n-vectors, whatever the stream's length.
// Thread safety: one thread at a time per instance (the binding serialises pushes).
#pragma once
#include <vector>

#include "setok/dpc_knn.h"

namespace setokim {

class ClusterCache {
 public:
  explicit ClusterCache(const ClusterParams& params);

  // Clusters the next frame (n x dim). changed_rows receives how many patches were recomputed
  // (n on the first frame). Throws BadInput on NaN/Inf, leaving the cache as it was.
  ClusterResult Push(const float* features, int* changed_rows);

  // Drops the cached frame (the next push recomputes everything) and frees its memory.
  void Reset();

 private:
  DpcKnn dpc_;
  std::vector<float> prev_;
  std::vector<float> gram_;
  bool valid_ = false;
};

}  // namespace setokim
