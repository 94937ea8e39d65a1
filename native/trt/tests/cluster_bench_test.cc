// Timings of the clustering at SeTok's real size (729 x 1152, k = 64), printed for bench/RESULTS.md:
// CPU Gram step, the same-shape plain GEMM, the whole CPU clustering, and (CUDA tier with a GPU)
// the CUDA clustering. A ctest program so the GPU check runs it; it fails only on wrong results.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "setok/dpc_knn.h"
#include "setok/gram_cpu.h"
#include "setok/parallel.h"
#include "test_util.h"
#ifdef SETOKIM_WITH_CUDA
#include "setok/dpc_knn_cuda.h"
#endif

using namespace setokim;
using namespace setokim::test;

namespace {

double MedianMs(int reps, const std::function<void()>& fn) {
  std::vector<double> ms;
  fn();  // warm-up
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main() {
  const int n = 729, dim = 1152;
  const int reps = std::getenv("SETOKIM_BENCH_REPS") ? std::atoi(std::getenv("SETOKIM_BENCH_REPS")) : 5;
  ClusterParams p;
  p.n = n;
  p.dim = dim;
  p.k = 64;
  p.threshold = 0.55;
  p.fallback = 64;
  const auto x = PlantedFeatures(27, 27, dim, 5, 21, 0.5);
  std::vector<float> g, c;
  DpcKnn dpc(p);
  ClusterResult cpu;
  const double gram_ms = MedianMs(reps, [&] { ComputeGram(x.data(), n, dim, g); });
  const double gemm_ms = MedianMs(reps, [&] { ReferenceGemm(x.data(), x.data(), n, n, dim, c); });
  const double cpu_ms = MedianMs(reps, [&] { cpu = dpc.Cluster(x.data()); });
  const double flops = 2.0 * n * n * dim;
  std::printf(
      "cpu (%s, %d threads): gram %.2f ms (%.1f GFLOP/s counting the full n*n*C, triangle only), "
      "plain gemm 729x1152x729 %.2f ms (%.1f GFLOP/s), cluster %.2f ms, %zu centres\n",
      GramIsa(), WorkerCount(), gram_ms, flops / gram_ms / 1e6, gemm_ms, flops / gemm_ms / 1e6, cpu_ms,
      cpu.centers.size());
  EXPECT(!cpu.centers.empty(), "no centres");
#ifdef SETOKIM_WITH_CUDA
  std::string why;
  if (!CudaClusterAvailable(&why)) {
    std::printf("cuda: skipped: no GPU (%s)\n", why.c_str());
  } else {
    DpcKnnCuda gpu(p);
    ClusterResult got;
    const double upload_ms = MedianMs(reps, [&] { got = gpu.Cluster(x.data()); });
    gpu.Upload(x.data());
    const double device_ms = MedianMs(reps * 4, [&] { got = gpu.ClusterDevice(); });
    const CudaTimings t = gpu.LastTimings();
    std::printf(
        "cuda (%s): cluster from device memory %.3f ms (gram %.3f, distances %.3f, density %.3f, "
        "delta+select+labels %.3f), with host upload/download %.3f ms, %zu centres\n",
        gpu.DeviceName().c_str(), device_ms, t.gram_ms, t.dist_ms, t.density_ms, t.rest_ms, upload_ms,
        got.centers.size());
    EXPECT(got.centers == cpu.centers && got.labels == cpu.labels, "CUDA differs from CPU at 729x1152");
    try {
      std::printf("%s", gpu.GramVariantReport(reps * 4).c_str());
    } catch (const std::exception& e) {
      EXPECT(false, "%s", e.what());
    }
  }
#endif
  return Finish();
}
