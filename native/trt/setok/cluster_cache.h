// Streaming clustering over the frames of one camera. A frame's result equals clustering it alone,
// bit for bit; the work follows what changed. The cache keeps the previous frame's features, the
// n x n distances, the Gram diagonal, and each row's t (k-th smallest distance), density and largest
// distance. For a frame whose m changed patches (rows that differ bitwise) are at most 3/8 of them:
//   - Gram: only the m changed columns, n x m entries (GramColumns), each in the reference order
//     (the m x m block of the changed rows computed once and mirrored);
//   - distances: the m changed rows and columns, from the new diagonal;
//   - density: a row none of whose changed entries was or is at most its t keeps its density
//     (its k nearest, t and their index-order sum are what they were); the others are recomputed,
//     t looked for first at the previous t and its neighbouring values (DensityRows' hint);
//   - delta, centres and labels as from scratch (one vectorised pass per row, O(n L) labels);
//   - the finite check covers the changed rows only (the others equal a frame already checked).
// Past 3/8 of the rows, or on the first frame, everything is recomputed (DpcKnn). An unchanged frame
// returns the previous result. Memory: one frame's features, the n x n distances, the Gram matrix
// of the last full frame and an n x m block, whatever the stream's length.
// Thread safety: one thread at a time per instance (the binding serialises pushes); each push uses
// all cores internally.
#pragma once
#include <vector>

#include "setok/dpc_knn.h"

namespace setokim {

class ClusterCache {
 public:
  explicit ClusterCache(const ClusterParams& params);

  // Clusters the next frame (n x dim). changed_rows receives how many patches differ from the
  // previous frame (n on the first frame). Throws BadInput on NaN/Inf, leaving the cache as it was.
  ClusterResult Push(const float* features, int* changed_rows);

  // Drops the cached frame (the next push recomputes everything) and frees its memory.
  void Reset();

 private:
  // The rows of `features` that differ from prev_, in ascending order.
  std::vector<int> ChangedRows(const float* features) const;
  ClusterResult Full(const float* features);
  ClusterResult Incremental(const float* features, const std::vector<int>& rows);
  // Row j, not a changed one: writes its m changed columns; true when its density must be recomputed.
  bool UpdateRow(int j, const std::vector<int>& rows);

  DpcKnn dpc_;
  std::vector<float> prev_;
  std::vector<float> gram_;        // full frames: the Gram matrix
  std::vector<float> block_;       // n x GramStride(m): Gram columns of the changed rows
  std::vector<float> block_dist_;  // n x m: their distances
  std::vector<float> diag_changed_;
  ClusterResult last_;
  bool valid_ = false;
};

}  // namespace setokim
