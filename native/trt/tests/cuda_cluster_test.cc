// The CUDA clustering against the CPU one: same centres and labels, scores within 1e-5 relative
// (the kernels follow the same rounding, so they are expected bit-identical; the count is printed).
// Without the CUDA tier or without a GPU it prints "skipped: ..." and exits 0.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "setok/dpc_knn.h"
#include "test_util.h"
#ifdef SETOKIM_WITH_CUDA
#include <cuda_runtime_api.h>

#include "setok/dpc_knn_cuda.h"
#endif

using namespace setokim;
using namespace setokim::test;

#ifdef SETOKIM_WITH_CUDA
namespace {

int bit_identical = 0, cases = 0;

void Compare(const char* name, const std::vector<float>& x, const ClusterParams& p) {
  const ClusterResult cpu = DpcKnn(p).Cluster(x.data());
  DpcKnnCuda gpu(p);
  const ClusterResult got = gpu.Cluster(x.data());
  EXPECT(got.centers == cpu.centers, "%s: centres differ (%zu vs %zu)", name, got.centers.size(), cpu.centers.size());
  EXPECT(got.labels == cpu.labels, "%s: labels differ", name);
  double worst = 0;
  for (int i = 0; i < p.n; ++i) {
    const double a = got.scores[i], b = cpu.scores[i];
    worst = std::max(worst, std::fabs(a - b) / std::max(1e-30, std::fabs(b)));
  }
  EXPECT(worst <= 1e-5, "%s: scores differ by %g relative", name, worst);
  ++cases;
  if (std::memcmp(got.scores.data(), cpu.scores.data(), sizeof(float) * p.n) == 0 &&
      std::memcmp(got.rho.data(), cpu.rho.data(), sizeof(float) * p.n) == 0) {
    ++bit_identical;
  }
  // Features already in device memory give the same result.
  float* dx = nullptr;
  if (cudaMalloc(reinterpret_cast<void**>(&dx), x.size() * sizeof(float)) == cudaSuccess) {
    cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice);
    const ClusterResult dev = gpu.ClusterDevice(dx);
    EXPECT(dev.centers == cpu.centers && dev.labels == cpu.labels, "%s: device-pointer input differs", name);
    cudaFree(dx);
  }
}

}  // namespace
#endif

int main() {
#ifndef SETOKIM_WITH_CUDA
  std::printf("skipped: built without CUDA (SETOKIM_CUDA=OFF or no nvcc)\n");
  return 0;
#else
  std::string why;
  if (!CudaClusterAvailable(&why)) {
    std::printf("skipped: no GPU (%s)\n", why.c_str());
    return 0;
  }
  ClusterParams p;
  p.n = 96;
  p.dim = 40;
  p.k = 8;
  p.threshold = 0.5;
  p.fallback = 10;
  Compare("random", RandomFeatures(p.n, p.dim, 3), p);
  p.threshold = 100;
  Compare("fallback", RandomFeatures(p.n, p.dim, 4), p);
  p.threshold = 0.0;
  p.maxTokens = 7;
  Compare("capped", RandomFeatures(p.n, p.dim, 5), p);
  ClusterParams q;
  q.n = 96;
  q.dim = 16;
  q.k = 8;
  q.threshold = 0.5;
  q.fallback = 64;
  Compare("planted", PlantedFeatures(8, 12, 16, 3, 11, 0.05), q);
  q.threshold = 0.1;
  Compare("repeated", RepeatedFeatures(q.n, q.dim, 5, 3), q);
  ClusterParams s;
  s.n = 1;
  s.dim = 3;
  s.k = 1;
  s.threshold = 0.5;
  s.fallback = 4;
  Compare("single patch", RandomFeatures(1, 3, 1), s);
  ClusterParams r;
  r.n = 729;
  r.dim = 1152;
  r.k = 64;
  r.threshold = 0.55;
  r.fallback = 64;
  Compare("729x1152 planted", PlantedFeatures(27, 27, 1152, 5, 21, 0.5), r);
  Compare("729x1152 random", RandomFeatures(729, 1152, 3), r);
  r.n = 2000;
  r.dim = 64;
  Compare("2000x64", PlantedFeatures(40, 50, 64, 7, 2, 0.3), r);
  bool threw = false;
  auto bad = RandomFeatures(96, 40, 1);
  bad[7] = NAN;
  try {
    DpcKnnCuda(p).Cluster(bad.data());
  } catch (const BadInput&) {
    threw = true;
  }
  EXPECT(threw, "NaN must throw BadInput");
  std::printf("cuda vs cpu: %d of %d cases bit-identical in scores and rho\n", bit_identical, cases);
  return Finish();
#endif
}
