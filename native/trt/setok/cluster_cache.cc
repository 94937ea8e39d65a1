#include "setok/cluster_cache.h"

#include <algorithm>
#include <cstring>

#include "setok/dpc_steps.h"
#include "setok/gram_cpu.h"
#include "setok/parallel.h"

namespace setokim {
namespace {

constexpr int kRowsPerTask = 16;

int Tasks(int n, int per) { return (n + per - 1) / per; }

// As DpcKnn: below ~1e5 cells one thread is faster than waking the pool on a shared machine.
bool WorthThreads(double cells) { return cells >= 1e5; }

}  // namespace

ClusterCache::ClusterCache(const ClusterParams& params) : dpc_(params) {}

std::vector<int> ClusterCache::ChangedRows(const float* features) const {
  const ClusterParams& p = dpc_.params();
  const size_t bytes = sizeof(float) * p.dim;
  // Rows compared in parallel chunks (a 729 x 1152 frame is 3.4 MB), gathered in order.
  constexpr int kChunk = 64;
  const int chunks = Tasks(p.n, kChunk);
  std::vector<std::vector<int>> found(chunks);
  ParallelFor(
      chunks,
      [&](int t) {
        for (int i = t * kChunk; i < std::min(p.n, (t + 1) * kChunk); ++i) {
          const size_t off = static_cast<size_t>(i) * p.dim;
          if (std::memcmp(features + off, prev_.data() + off, bytes) != 0) found[t].push_back(i);
        }
      },
      WorthThreads(static_cast<double>(p.n) * p.dim / 8));
  std::vector<int> rows;
  for (const auto& f : found) rows.insert(rows.end(), f.begin(), f.end());
  return rows;
}

ClusterResult ClusterCache::Push(const float* features, int* changed_rows) {
  const ClusterParams& p = dpc_.params();
  std::vector<int> rows;
  if (valid_) {
    rows = ChangedRows(features);
    // Unchanged rows equal a frame already checked: only the changed ones can hold NaN or Inf.
    for (int i : rows) CheckFinite(features + static_cast<size_t>(i) * p.dim, 1, p.dim);
  } else {
    CheckFinite(features, p.n, p.dim);
  }
  const int changed = valid_ ? static_cast<int>(rows.size()) : p.n;
  if (changed_rows) *changed_rows = changed;
  if (valid_ && changed == 0) return last_;
  valid_ = false;  // until the frame is through (an exception leaves a full recompute next)
  // The triangle of a full Gram is n^2 / 2 entries against n x m here, and the rest of a frame costs
  // more incrementally: past 3/8 of the rows (measured: at 40% the update was ~10% slower) recompute.
  if (changed * 8 > p.n * 3) {
    prev_.assign(features, features + static_cast<size_t>(p.n) * p.dim);
    last_ = Full(features);
  } else {
    for (int i : rows)
      std::memcpy(prev_.data() + static_cast<size_t>(i) * p.dim, features + static_cast<size_t>(i) * p.dim,
                  sizeof(float) * p.dim);
    last_ = Incremental(features, rows);
  }
  valid_ = true;
  return last_;
}

ClusterResult ClusterCache::Full(const float* features) {
  const ClusterParams& p = dpc_.params();
  ComputeGram(features, p.n, p.dim, gram_);
  return dpc_.ClusterFromGram(gram_);
}

ClusterResult ClusterCache::Incremental(const float* features, const std::vector<int>& rows) {
  const ClusterParams& p = dpc_.params();
  const int n = p.n, m = static_cast<int>(rows.size());
  DpcState& st = dpc_.state();
  const bool par = WorthThreads(static_cast<double>(n) * m);
  const bool par_rows = WorthThreads(static_cast<double>(n) * n);
  // Step 1 for the changed columns; their new diagonal first (every distance of theirs reads it).
  GramColumns(features, n, p.dim, rows, block_);
  const int ld = GramStride(m);
  diag_changed_.resize(m);
  for (int r = 0; r < m; ++r) {
    st.diag[rows[r]] = block_[static_cast<size_t>(rows[r]) * ld + r];
    diag_changed_[r] = st.diag[rows[r]];
  }
  // Step 2: block_dist_[j][r] = D[j][rows[r]] = D[rows[r]][j] (D is symmetric bit for bit).
  block_dist_.resize(static_cast<size_t>(n) * m);
  const float fdim = static_cast<float>(p.dim);
  ParallelFor(
      Tasks(n, kRowsPerTask * 4),
      [&](int t) {
        for (int j = t * kRowsPerTask * 4; j < std::min(n, (t + 1) * kRowsPerTask * 4); ++j) {
          DistanceRow(st.diag[j], diag_changed_.data(), block_.data() + static_cast<size_t>(j) * ld, fdim, m,
                      block_dist_.data() + static_cast<size_t>(j) * m);
        }
      },
      par);
  // The rows: changed ones replaced whole, the others get their m new columns (disjoint writes);
  // then step 3 for every row whose k nearest may have changed, eight rows at a time where most
  // of a block needs it (the vectorised block kernel), one at a time elsewhere, each selection
  // starting from the row's previous t.
  std::vector<int> position(n, -1);
  for (int r = 0; r < m; ++r) position[rows[r]] = r;
  std::vector<char> stale(n, 0);
  // The changed rows, transposed from the block 8 x 8 at a time (through registers).
  ParallelFor(
      Tasks(m, 8),
      [&](int t) {
        const int r0 = t * 8, r1 = std::min(m, r0 + 8);
        float* dst[8] = {};
        for (int r = r0; r < r1; ++r) dst[r - r0] = st.dist.data() + static_cast<size_t>(rows[r]) * n;
        TransposeColumns(block_dist_.data(), n, m, r0, r1, dst);
        for (int r = r0; r < r1; ++r) stale[rows[r]] = 1;
      },
      par);
  ParallelFor(
      Tasks(n, kRowsPerTask),
      [&](int t) {
        for (int j = t * kRowsPerTask; j < std::min(n, (t + 1) * kRowsPerTask); ++j) {
          if (position[j] < 0) stale[j] = UpdateRow(j, rows);
        }
        for (int i0 = t * kRowsPerTask; i0 < std::min(n, (t + 1) * kRowsPerTask); i0 += kDensityBlock) {
          const int block = std::min(kDensityBlock, n - i0);
          int count = 0;
          for (int r = 0; r < block; ++r) count += stale[i0 + r];
          if (2 * count >= block) {
            dpc_.Density(i0, block, true);
          } else {
            for (int r = 0; r < block; ++r)
              if (stale[i0 + r]) dpc_.Density(i0 + r, 1, true);
          }
        }
      },
      par_rows);
  // Step 4: delta = min D to a better-ranked patch (a scan per row: every rank may have moved).
  std::vector<int32_t> order, rank;
  RankByDensity(st.rho, order, rank);
  std::vector<float> delta(n);
  ParallelFor(
      Tasks(n, kRowsPerTask * 4),
      [&](int t) {
        for (int i = t * kRowsPerTask * 4; i < std::min(n, (t + 1) * kRowsPerTask * 4); ++i) {
          DeltaRow(st.dist.data() + static_cast<size_t>(i) * n, rank.data(), rank[i], n, &delta[i], &st.row_max[i]);
        }
      },
      par_rows);
  delta[order[0]] = *std::max_element(st.row_max.begin(), st.row_max.end());
  return FinishClustering(st.dist.data(), st.rho, delta, p, par_rows);
}

bool ClusterCache::UpdateRow(int j, const std::vector<int>& rows) {
  const int n = dpc_.params().n, m = static_cast<int>(rows.size());
  DpcState& st = dpc_.state();
  float* row = st.dist.data() + static_cast<size_t>(j) * n;
  const float* after = block_dist_.data() + static_cast<size_t>(j) * m;
  const float t = st.kth[j];
  int stale = 0;  // a changed entry was or is among the k nearest (at most t)
  for (int r = 0; r < m; ++r) {
    const float b = row[rows[r]], a = after[r];
    row[rows[r]] = a;
    stale |= static_cast<int>(b <= t) | static_cast<int>(a <= t);  // no branch: a mispredict per entry near t
  }
  return stale != 0;
}

void ClusterCache::Reset() {
  valid_ = false;
  std::vector<float>().swap(prev_);
  std::vector<float>().swap(gram_);
  std::vector<float>().swap(block_);
  std::vector<float>().swap(block_dist_);
  dpc_.state() = DpcState();
  last_ = ClusterResult();
}

}  // namespace setokim
