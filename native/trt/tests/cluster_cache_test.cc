// ClusterCache (the streaming clustering) against clustering each frame alone (DpcKnn, itself
// checked bit for bit against the plain-loop reference in dpc_knn_test.cc): centres, labels, scores
// and rho must be bit-identical on every frame, whatever changed: a few rows, most rows, none, rows
// copied from others (ties at t), a block moving across the grid, n not a multiple of the tiles,
// k = n, and SeTok's 729 patches. Prints "N passed, M failed".
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "setok/cluster_cache.h"
#include "setok/dpc_knn.h"
#include "setok/gram_cpu.h"
#include "test_util.h"

using namespace setokim;
using namespace setokim::test;

namespace {

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0);
}

bool Same(const ClusterResult& got, const ClusterResult& want) {
  return got.centers == want.centers && got.labels == want.labels && SameBits(got.scores, want.scores) &&
         SameBits(got.rho, want.rho);
}

ClusterParams Params(int n, int dim, int k, double threshold, int fallback) {
  ClusterParams p;
  p.n = n;
  p.dim = dim;
  p.k = k;
  p.threshold = threshold;
  p.fallback = fallback;
  return p;
}

// Adds noise to `count` random rows (with repeats, as bench/cluster.ts does).
void Perturb(std::vector<float>& x, int n, int dim, int count, float scale, Rng& r) {
  for (int m = 0; m < count; ++m) {
    const int i = static_cast<int>(r() * n);
    for (int c = 0; c < dim; ++c) x[static_cast<size_t>(i) * dim + c] += static_cast<float>((r() * 2 - 1) * scale);
  }
}

void TestStreamingCache() {
  const ClusterParams p = Params(120, 64, 10, 0.4, 16);
  ClusterCache cache(p);
  auto x = PlantedFeatures(10, 12, 64, 4, 5, 0.2);
  Rng r(77);
  for (int frame = 0; frame < 6; ++frame) {
    int changed = -1;
    if (frame > 0) Perturb(x, p.n, p.dim, frame == 3 ? 0 : (frame == 5 ? 100 : 12), 0.3f, r);  // none, few, most
    const ClusterResult got = cache.Push(x.data(), &changed);
    EXPECT(Same(got, DpcKnn(p).Cluster(x.data())), "frame %d differs from clustering it alone", frame);
    if (frame == 0) EXPECT(changed == p.n, "first frame recomputes all (%d)", changed);
    if (frame == 3) EXPECT(changed == 0, "unchanged frame recomputes nothing (%d)", changed);
    if (frame == 1) EXPECT(changed > 0 && changed <= 12, "changed rows %d", changed);
  }
  auto bad = x;
  bad[5] = NAN;
  bool threw = false;
  try {
    cache.Push(bad.data(), nullptr);
  } catch (const BadInput&) {
    threw = true;
  }
  EXPECT(threw, "NaN frame must throw BadInput");
  int changed = -1;
  const ClusterResult after = cache.Push(x.data(), &changed);
  EXPECT(changed == 0 && Same(after, DpcKnn(p).Cluster(x.data())), "cache intact after a bad frame");
  // A NaN in a row that changed (the finite check covers changed rows only) is still caught.
  bad = x;
  bad[static_cast<size_t>(7) * p.dim + 3] = INFINITY;
  threw = false;
  try {
    cache.Push(bad.data(), nullptr);
  } catch (const BadInput& e) {
    threw = std::strstr(e.what(), "[0][3]") || std::strstr(e.what(), "Inf");
  }
  EXPECT(threw, "Inf in a changed row must throw BadInput");
  Perturb(x, p.n, p.dim, 5, 0.3f, r);
  EXPECT(Same(cache.Push(x.data(), nullptr), DpcKnn(p).Cluster(x.data())), "incremental frame after a bad one");
}

// Frames whose changed rows become copies of other rows: exact ties at the k-th distance, the case
// where keeping a row's density must be decided exactly.
void TestStreamingTies() {
  const ClusterParams p = Params(150, 12, 9, 0.2, 12);
  ClusterCache cache(p);
  auto x = RepeatedFeatures(p.n, p.dim, 20, 8);
  Rng r(5);
  bool all_same = true;
  int partial_frames = 0;
  for (int frame = 0; frame < 40; ++frame) {
    if (frame > 0) {
      const int count = 1 + static_cast<int>(r() * 10);
      for (int m = 0; m < count; ++m) {
        const int dst = static_cast<int>(r() * p.n), src = static_cast<int>(r() * p.n);
        if (r() < 0.5) {
          std::memcpy(&x[dst * p.dim], &x[src * p.dim], sizeof(float) * p.dim);
        } else {
          x[dst * p.dim + static_cast<int>(r() * p.dim)] += 0.25f;
        }
      }
    }
    int changed = 0;
    all_same &= Same(cache.Push(x.data(), &changed), DpcKnn(p).Cluster(x.data()));
    partial_frames += changed > 0 && changed * 8 <= p.n * 3;
  }
  EXPECT(all_same, "a tie-heavy stream frame differs from clustering it alone");
  EXPECT(partial_frames > 25, "only %d frames took the incremental path", partial_frames);
}

// Every fraction of changed rows around the switch to a full recompute (3/8), on sizes that are
// and are not multiples of the kernels' tiles, k from 1 to n.
void TestFractions() {
  struct Case {
    int n, dim, k;
  };
  const Case cases[] = {{300, 48, 12}, {37, 20, 5}, {64, 16, 64}, {97, 33, 1}, {256, 64, 16}};
  const double fractions[] = {0.01, 0.1, 0.3, 0.37, 0.38, 0.49, 0.51, 0.9, 0.0, 0.05};
  int frames = 0, bad = 0;
  for (const Case& c : cases) {
    const ClusterParams p = Params(c.n, c.dim, c.k, 0.3, 8);
    ClusterCache cache(p);
    auto x = PlantedFeatures(1, c.n, c.dim, 4, static_cast<uint32_t>(c.n), 0.4);
    Rng r(c.n * 7 + 1);
    cache.Push(x.data(), nullptr);
    for (int round = 0; round < 2; ++round) {
      for (double f : fractions) {
        Perturb(x, c.n, c.dim, static_cast<int>(std::lround(f * c.n)), 0.08f, r);
        ++frames;
        if (!Same(cache.Push(x.data(), nullptr), DpcKnn(p).Cluster(x.data()))) {
          if (bad++ < 5) std::printf("  n=%d dim=%d k=%d fraction %.2f differs\n", c.n, c.dim, c.k, f);
        }
      }
    }
  }
  EXPECT(bad == 0, "%d of %d frames differ from clustering them alone", bad, frames);
}

// A square object moving over a still background on a 20 x 20 grid (what a camera stream sends):
// the changed rows are the square's old and new places.
void TestMovingBlock() {
  const int side = 20, dim = 24;
  const ClusterParams p = Params(side * side, dim, 16, 0.5, 8);
  const auto background = PlantedFeatures(side, side, dim, 3, 11, 0.2);
  const auto object = RandomFeatures(1, dim, 3, 2.0f);
  ClusterCache cache(p);
  bool all_same = true;
  int max_changed = 0;
  for (int frame = 0; frame < 14; ++frame) {
    auto x = background;
    for (int rr = 0; rr < 4; ++rr)
      for (int cc = 0; cc < 4; ++cc) {
        const int i = (3 + rr) * side + (frame + cc) % side;
        for (int c = 0; c < dim; ++c) x[static_cast<size_t>(i) * dim + c] = object[c] + 0.01f * static_cast<float>(rr);
      }
    int changed = 0;
    all_same &= Same(cache.Push(x.data(), &changed), DpcKnn(p).Cluster(x.data()));
    if (frame > 0) max_changed = std::max(max_changed, changed);
  }
  EXPECT(all_same, "a moving-block frame differs from clustering it alone");
  EXPECT(max_changed == 8, "a 4 x 4 block moving one column changes 8 rows, got %d", max_changed);
}

// SeTok's real patch count (27 x 27 = 729, not a multiple of the kernels' tiles), 10% of the patches
// changing per frame (the benchmark's case; its 1152 channels cost minutes under qemu and change
// nothing in the logic: the features are 128 wide here).
void TestRealPatchCount() {
  const ClusterParams p = Params(729, 128, 64, 0.55, 64);
  ClusterCache cache(p);
  auto x = PlantedFeatures(27, 27, 128, 5, 21, 0.5);
  Rng r(5);
  bool all_same = true;
  for (int frame = 0; frame < 4; ++frame) {
    if (frame > 0) Perturb(x, p.n, p.dim, 73, 0.05f, r);
    all_same &= Same(cache.Push(x.data(), nullptr), DpcKnn(p).Cluster(x.data()));
  }
  EXPECT(all_same, "a 729-patch frame differs from clustering it alone");
}

// GramColumns against ComputeGram, entry for entry: every width of the last column tile (m = 1..41,
// and 70 as a 729-patch frame at 10%), distinct columns in any order (their m x m block is computed
// as a triangle and mirrored), n not a multiple of the row tiles, and a depth that spans several
// cache blocks and ends inside one.
void TestGramColumns() {
  const int n = 131, dim = 300;
  const auto x = RandomFeatures(n, dim, 9);
  std::vector<float> gram, block;
  ComputeGram(x.data(), n, dim, gram);
  const int ld = GramStride(n);
  Rng r(3);
  int bad = 0, cases = 0;
  for (int m = 1; m <= 42; ++m) {
    const int count = m == 42 ? 70 : m;
    std::vector<int> all(n);
    for (int j = 0; j < n; ++j) all[j] = j;
    for (int j = n - 1; j > 0; --j) std::swap(all[j], all[static_cast<int>(r() * (j + 1))]);
    std::vector<int> cols(all.begin(), all.begin() + count);
    if (m % 2 == 0) std::sort(cols.begin(), cols.end());  // as a stream's changed rows
    GramColumns(x.data(), n, dim, cols, block);
    const int ldo = GramStride(count);
    for (int j = 0; j < n; ++j)
      for (int q = 0; q < count; ++q) {
        const int a = std::min(j, cols[q]), b = std::max(j, cols[q]);
        const float want = gram[static_cast<size_t>(a) * ld + b], got = block[static_cast<size_t>(j) * ldo + q];
        if (std::memcmp(&want, &got, sizeof want) != 0 && bad++ < 5)
          std::printf("  m=%d G[%d][%d] = %.9g, GramColumns %.9g\n", count, j, cols[q], want, got);
      }
    ++cases;
  }
  EXPECT(bad == 0, "%d GramColumns entries differ from ComputeGram over %d column sets", bad, cases);
}

}  // namespace

int main() {
  TestGramColumns();
  TestStreamingCache();
  TestStreamingTies();
  TestFractions();
  TestMovingBlock();
  TestRealPatchCount();
  return Finish();
}
