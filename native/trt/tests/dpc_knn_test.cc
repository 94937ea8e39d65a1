// The CPU clustering against a plain-loop port of src/setok/reference.ts (bit for bit), plus the
// position encoding and bad input (the streaming cache: cluster_cache_test.cc). Prints "N passed, M failed".
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "setok/dpc_knn.h"
#include "setok/dpc_steps.h"
#include "setok/fp_order.h"
#include "setok/gram_cpu.h"
#include "setok/position_encoding.h"
#include "test_util.h"

using namespace setokim;
using namespace setokim::test;

namespace {

// One Gram entry as the reference sums it: ascending c, each product rounded on its own (volatile).
float NaiveDot(const std::vector<float>& x, int i, int j, int dim) {
  float acc = 0.0f;
  for (int c = 0; c < dim; ++c) {
    volatile float prod = x[i * dim + c] * x[j * dim + c];
    acc = acc + prod;
  }
  return acc;
}

// The reference, loop for loop.
ClusterResult Naive(const std::vector<float>& x, const ClusterParams& p) {
  const int n = p.n, dim = p.dim;
  std::vector<float> g(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = i; j < n; ++j) {
      const float acc = NaiveDot(x, i, j, dim);
      g[i * n + j] = g[j * n + i] = acc;
    }
  std::vector<float> d(static_cast<size_t>(n) * n);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      float d2 = (g[i * n + i] + g[j * n + j]) - 2.0f * g[i * n + j];
      if (!(d2 > 0)) d2 = 0;
      d[i * n + j] = std::sqrt(d2 / static_cast<float>(dim));
    }
  ClusterResult r;
  r.rho.resize(n);
  for (int i = 0; i < n; ++i) {
    std::vector<float> row(d.begin() + i * n, d.begin() + (i + 1) * n);
    std::sort(row.begin(), row.end());
    const float t = row[p.k - 1];
    int need = p.k;
    for (int m = 0; m < p.k; ++m) need -= row[m] < t;
    float sum = 0;
    for (int j = 0; j < n; ++j) {
      const float v = d[i * n + j];
      if (v < t || (v == t && need > 0)) {
        if (v == t) --need;
        volatile float sq = v * v;
        sum = sum + sq;
      }
    }
    r.rho[i] = static_cast<float>(fp::ExpDet(-static_cast<double>(sum / static_cast<float>(p.k))));
  }
  float dmax = 0;
  for (float v : d) dmax = std::max(dmax, v);
  r.scores.resize(n);
  for (int i = 0; i < n; ++i) {
    float delta = INFINITY;
    for (int j = 0; j < n; ++j)
      if (r.rho[j] > r.rho[i] || (r.rho[j] == r.rho[i] && j < i)) delta = std::min(delta, d[i * n + j]);
    if (delta == INFINITY) delta = dmax;
    r.scores[i] = r.rho[i] * delta;
  }
  r.centers = SelectCenters(r.scores, p);
  r.labels.resize(n);
  for (int i = 0; i < n; ++i) {
    int best = 0;
    for (size_t m = 1; m < r.centers.size(); ++m)
      if (d[i * n + r.centers[m]] < d[i * n + r.centers[best]]) best = static_cast<int>(m);
    r.labels[i] = best;
  }
  for (size_t m = 0; m < r.centers.size(); ++m) r.labels[r.centers[m]] = static_cast<int>(m);
  return r;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void CheckCase(const char* name, const std::vector<float>& x, const ClusterParams& p) {
  DpcKnn dpc(p);
  const ClusterResult got = dpc.Cluster(x.data());
  const ClusterResult want = Naive(x, p);
  EXPECT(got.centers == want.centers, "%s: centres differ (%zu vs %zu)", name, got.centers.size(), want.centers.size());
  EXPECT(got.labels == want.labels, "%s: labels differ", name);
  EXPECT(SameBits(got.scores, want.scores), "%s: scores differ", name);
  EXPECT(SameBits(got.rho, want.rho), "%s: rho differ", name);
  EXPECT(!got.centers.empty(), "%s: no centres", name);
}

void TestGramMatchesPlainLoop() {
  for (int n : {1, 5, 17, 50, 97}) {
    for (int dim : {1, 3, 16, 33, 300}) {
      const auto x = RandomFeatures(n, dim, 100 + n * 7 + dim);
      std::vector<float> g;
      ComputeGram(x.data(), n, dim, g);
      const int ld = GramStride(n);
      bool ok = true;
      for (int i = 0; i < n; ++i)
        for (int j = i; j < n; ++j) {
          const float acc = NaiveDot(x, i, j, dim);
          ok &= std::memcmp(&acc, &g[static_cast<size_t>(i) * ld + j], 4) == 0;
        }
      EXPECT(ok, "gram n=%d dim=%d (%s)", n, dim, GramIsa());
    }
  }
}

void TestGemmYardstick() {
  const int m = 13, n = 21, k = 37;
  const auto a = RandomFeatures(m, k, 1), b = RandomFeatures(k, n, 2);
  std::vector<float> c;
  ReferenceGemm(a.data(), b.data(), m, n, k, c);
  double err = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int q = 0; q < k; ++q) s += static_cast<double>(a[i * k + q]) * b[q * n + j];
      err = std::max(err, std::fabs(s - c[i * n + j]));
    }
  EXPECT(err < 1e-4, "gemm error %g", err);
}

void TestClusterCases() {
  ClusterParams p;
  p.n = 96;
  p.dim = 40;
  p.k = 8;
  p.threshold = 0.5;
  p.fallback = 10;
  CheckCase("random", RandomFeatures(p.n, p.dim, 3), p);
  p.threshold = 100;  // nothing passes: fallback
  CheckCase("fallback", RandomFeatures(p.n, p.dim, 4), p);
  p.threshold = 0.0;
  p.maxTokens = 7;
  CheckCase("capped", RandomFeatures(p.n, p.dim, 5), p);
  ClusterParams q;
  q.n = 8 * 12;
  q.dim = 16;
  q.k = 8;
  q.threshold = 0.5;
  q.fallback = 64;
  CheckCase("planted", PlantedFeatures(8, 12, 16, 3, 11, 0.05), q);
  q.threshold = 0.1;
  CheckCase("repeated", RepeatedFeatures(q.n, q.dim, 5, 3), q);
  ClusterParams r;
  r.n = 729;
  r.dim = 1152;
  r.k = 64;
  r.threshold = 0.55;
  r.fallback = 64;
  CheckCase("729x1152", PlantedFeatures(27, 27, 1152, 5, 21, 0.5), r);
  // The cap: not reached equals uncapped; reached keeps the best scores.
  ClusterParams u = p;
  u.threshold = 0.3;
  u.maxTokens = 0;
  const auto x = RandomFeatures(u.n, u.dim, 9);
  const ClusterResult full = DpcKnn(u).Cluster(x.data());
  u.maxTokens = static_cast<int>(full.centers.size());
  const ClusterResult same = DpcKnn(u).Cluster(x.data());
  EXPECT(same.centers == full.centers && same.labels == full.labels, "cap not reached changes the result");
}

void TestBadInput() {
  auto throws = [](ClusterParams p, size_t count) {
    try {
      ValidateClusterParams(p, count);
    } catch (const BadInput&) {
      return true;
    }
    return false;
  };
  ClusterParams p;
  p.n = 10;
  p.dim = 4;
  p.k = 3;
  EXPECT(!throws(p, 40), "valid params rejected");
  EXPECT(throws(p, 39), "length mismatch accepted");
  ClusterParams q = p;
  q.k = 11;
  EXPECT(throws(q, 40), "n < k accepted");
  q = p;
  q.dim = 0;
  EXPECT(throws(q, 0), "dim 0 accepted");
  auto x = RandomFeatures(10, 4, 1);
  x[13] = INFINITY;
  bool threw = false;
  try {
    DpcKnn(p).Cluster(x.data());
  } catch (const BadInput& e) {
    threw = std::strstr(e.what(), "[3][1]") != nullptr;
  }
  EXPECT(threw, "Inf not reported with its position");
}

void TestPositionEncoding() {
  const auto pe = PositionEncodingTable(3, 4, 10);
  const int base = (2 * 4 + 3) * 10;  // row 2, column 3; ch = 6
  EXPECT(pe[base + 0] == static_cast<float>(std::sin(2.0)) && pe[base + 1] == static_cast<float>(std::cos(2.0)),
         "row pair 0");
  const double f1 = 1.0 / std::pow(10000.0, 2.0 / 6);
  EXPECT(pe[base + 2] == static_cast<float>(std::sin(2 * f1)), "row pair 1");
  EXPECT(pe[base + 6] == static_cast<float>(std::sin(3.0)) && pe[base + 9] == static_cast<float>(std::cos(3 * f1)),
         "column pairs");
  std::vector<float> x(3 * 4 * 10, 1.0f);
  AddPositionEncoding(x.data(), 3, 4, 10);
  EXPECT(x[1] == 2.0f && x[0] == 1.0f, "added");
}

// Step 3's selection and sum against a sort and a plain loop, on rows built to hit every path:
// ties at t (coarse values), zeros (self distances, duplicates), all-equal rows, n not a multiple
// of the vector width, k = 1 and k = n, blocks of 1..kDensityBlock rows.
void TestDensitySelection() {
  Rng r(77);
  int bad = 0, cases = 0, hinted_bad = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int n = 1 + static_cast<int>(r() * 300);
    const int k = trial % 7 == 0 ? n : trial % 11 == 0 ? 1 : 1 + static_cast<int>(r() * n);
    const int rows = 1 + static_cast<int>(r() * kDensityBlock);
    const int kind = trial % 4;  // 0 continuous, 1 coarse (ties), 2 many zeros, 3 one value
    std::vector<float> d(static_cast<size_t>(rows) * n);
    for (auto& v : d) {
      const double u = r();
      v = kind == 0   ? static_cast<float>(u * 3)
          : kind == 1 ? static_cast<float>(std::floor(u * 6) * 0.25)
          : kind == 2 ? (u < 0.4 ? 0.0f : static_cast<float>(u))
                      : 0.5f;
    }
    std::vector<float> kth(rows), sum(rows);
    DensityRows(d.data(), n, k, rows, kth.data(), sum.data());
    // With a hint (a stream's previous t): right, too low, too high, none, just below or above t,
    // the row's next value or the one after below or above t (t one or two values away: the
    // neighbour shortcut and the selection past it); the result is the same.
    std::vector<float> hint(rows), kth_h(rows), sum_h(rows);
    const int hint_kind = trial % 10;
    for (int i = 0; i < rows; ++i) {
      const float t = kth[i];
      // The row's nearest values below and above a value (the value itself when there is none).
      const auto neighbour = [&](float x, bool above) {
        float best = x;
        for (int j = 0; j < n; ++j) {
          const float v = d[static_cast<size_t>(i) * n + j];
          if (above ? v > x && (best == x || v < best) : v < x && (best == x || v > best)) best = v;
        }
        return best;
      };
      hint[i] = hint_kind == 0   ? t
                : hint_kind == 1 ? t * 0.5f
                : hint_kind == 2 ? t * 3.0f
                : hint_kind == 3 ? 0.0f
                : hint_kind == 4 ? std::nextafter(t, 0.0f)
                : hint_kind == 5 ? std::nextafter(t, INFINITY)
                : hint_kind == 6 ? neighbour(t, false)
                : hint_kind == 7 ? neighbour(t, true)
                : hint_kind == 8 ? neighbour(neighbour(t, false), false)
                                 : neighbour(neighbour(t, true), true);
    }
    DensityRows(d.data(), n, k, rows, kth_h.data(), sum_h.data(), hint.data());
    hinted_bad += std::memcmp(kth.data(), kth_h.data(), sizeof(float) * rows) != 0 ||
                  std::memcmp(sum.data(), sum_h.data(), sizeof(float) * rows) != 0;
    for (int i = 0; i < rows; ++i) {
      const float* row = d.data() + static_cast<size_t>(i) * n;
      std::vector<float> sorted(row, row + n);
      std::sort(sorted.begin(), sorted.end());
      const float t = sorted[k - 1];
      int need = k;
      for (int m = 0; m < k; ++m) need -= sorted[m] < t;
      float want = 0.0f;
      for (int j = 0; j < n; ++j) {
        if (row[j] < t || (row[j] == t && need > 0)) {
          need -= row[j] == t;
          volatile float sq = row[j] * row[j];
          want = want + sq;
        }
      }
      ++cases;
      const float one_row = DensitySum(row, n, k, t);
      const bool ok = kth[i] == t && KthSmallest(row, n, k) == t && std::memcmp(&sum[i], &want, sizeof want) == 0 &&
                      std::memcmp(&one_row, &want, sizeof want) == 0;
      if (!ok && bad++ < 5)
        std::printf("  n=%d k=%d kind=%d row=%d: t %g vs %g, sum %g vs %g\n", n, k, kind, i, kth[i], t, sum[i], want);
    }
  }
  EXPECT(bad == 0, "%d of %d rows differ from sort + plain loop", bad, cases);
  EXPECT(hinted_bad == 0, "%d blocks differ with a hint", hinted_bad);
}

// Step 4's order (rho descending, then index ascending) against a comparison sort: distinct values,
// many ties, zeros and ones (rho's whole range), and a -0 (not a density: ranked as the sort does).
void TestRankByDensity() {
  Rng r(11);
  int bad = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(r() * 900);
    std::vector<float> rho(n);
    for (auto& v : rho) {
      const double u = r();
      v = trial % 3 == 0 ? static_cast<float>(u) : trial % 3 == 1 ? static_cast<float>(std::floor(u * 5) / 4) : 1.0f;
    }
    if (trial % 20 == 7) rho[n / 2] = -0.0f;
    std::vector<int32_t> want(n), order, rank;
    std::iota(want.begin(), want.end(), 0);
    std::sort(want.begin(), want.end(),
              [&](int32_t a, int32_t b) { return rho[a] > rho[b] || (rho[a] == rho[b] && a < b); });
    RankByDensity(rho, order, rank);
    bool ok = order == want;
    for (int i = 0; i < n && ok; ++i) ok = rank[order[i]] == i;
    if (!ok && bad++ < 3) std::printf("  trial %d n=%d: order differs\n", trial, n);
  }
  EXPECT(bad == 0, "%d of 200 rankings differ from the comparison sort", bad);
}

}  // namespace

int main() {
  std::printf("kernels: %s\n", GramIsa());
  TestGramMatchesPlainLoop();
  TestGemmYardstick();
  TestClusterCases();
  TestBadInput();
  TestPositionEncoding();
  TestDensitySelection();
  TestRankByDensity();
  return Finish();
}
