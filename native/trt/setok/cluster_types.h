// Plain structs shared by the CPU and CUDA clustering and the Node binding (copied from JS values).
// Thread safety: plain data.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace setokim {

// Largest n accepted: two n x n float matrices (2 GiB at this size) must fit in memory.
constexpr int kMaxClusterPatches = 16384;

struct ClusterParams {
  int n = 0;    // patches (rows)
  int dim = 0;  // feature width C
  int k = 64;   // nearest neighbours for the density, self included
  double threshold = 0.55;
  int fallback = 64;  // centres to take when no score passes the threshold
  int maxTokens = 0;  // cap on centres; 0 = none
};

struct ClusterResult {
  std::vector<int32_t> centers;  // patch indices, ascending
  std::vector<int32_t> labels;   // per patch: position in centers
  std::vector<float> scores;     // per patch: rho * delta
  std::vector<float> rho;        // per patch density (kept for tests and the CUDA comparison)
};

// Bad input (n < k, dim 0, NaN/Inf, lengths): the binding turns it into code BAD_INPUT.
class BadInput : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Throws BadInput unless the parameters are usable and `count` == n * dim.
void ValidateClusterParams(const ClusterParams& p, size_t count);

// Throws BadInput naming the first NaN or Inf.
void CheckFinite(const float* x, int n, int dim);

// Step 5 of docs/SETOK.md: centres from scores (threshold, else fallback best; cap keeps the best),
// ascending; ties in score go to the lower index.
std::vector<int32_t> SelectCenters(const std::vector<float>& scores, const ClusterParams& p);

}  // namespace setokim
