// Tiny assertion helpers for the ctest programs: count, report, exit status from main.
#pragma once
#include <cstdint>
#include <cstdio>
#include <vector>

namespace setokim::test {

inline int& Passed() {
  static int v = 0;
  return v;
}
inline int& Failed() {
  static int v = 0;
  return v;
}

#define EXPECT(cond, ...)                                         \
  do {                                                            \
    if (cond) {                                                   \
      ++::setokim::test::Passed();                                \
    } else {                                                      \
      ++::setokim::test::Failed();                                \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::printf(__VA_ARGS__);                                   \
      std::printf("\n");                                          \
    }                                                             \
  } while (0)

inline int Finish() {
  std::printf("%d passed, %d failed\n", Passed(), Failed());
  return Failed() == 0 ? 0 : 1;
}

// Mulberry32, as in test/setok/helpers.ts.
struct Rng {
  uint32_t a;
  explicit Rng(uint32_t seed) : a(seed) {}
  double operator()() {
    a += 0x6d2b79f5u;
    uint32_t t = a;
    t = (t ^ (t >> 15)) * (t | 1u);
    t ^= t + (t ^ (t >> 7)) * (t | 61u);
    return static_cast<double>(t ^ (t >> 14)) / 4294967296.0;
  }
};

inline std::vector<float> RandomFeatures(int n, int dim, uint32_t seed, float scale = 1.0f) {
  Rng r(seed);
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (auto& v : x) v = static_cast<float>((r() * 2 - 1) * scale);
  return x;
}

inline std::vector<float> PlantedFeatures(int rows, int cols, int dim, int regions, uint32_t seed, double noise) {
  Rng r(seed);
  std::vector<std::vector<float>> centres(regions, std::vector<float>(dim));
  for (auto& c : centres)
    for (auto& v : c) v = static_cast<float>((r() * 2 - 1) * 2);
  std::vector<float> x(static_cast<size_t>(rows) * cols * dim);
  for (int p = 0; p < rows * cols; ++p) {
    int region = (p % cols) * regions / cols;
    if (region > regions - 1) region = regions - 1;
    for (int c = 0; c < dim; ++c)
      x[static_cast<size_t>(p) * dim + c] = static_cast<float>(centres[region][c] + (r() * 2 - 1) * noise);
  }
  return x;
}

inline std::vector<float> RepeatedFeatures(int n, int dim, int distinct, uint32_t seed) {
  const std::vector<float> base = RandomFeatures(distinct, dim, seed);
  Rng r(seed + 1);
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (int i = 0; i < n; ++i) {
    const int src = static_cast<int>(r() * distinct);
    for (int c = 0; c < dim; ++c) x[static_cast<size_t>(i) * dim + c] = base[static_cast<size_t>(src) * dim + c];
  }
  return x;
}

}  // namespace setokim::test
