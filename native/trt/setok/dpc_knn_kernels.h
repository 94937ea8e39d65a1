// Kernel launchers of DpcKnnCuda (dpc_knn_kernels.cu), called from dpc_knn_cuda.cc on the thread
// that owns the instance. All pointers are device pointers; all launches go to `stream`.
#pragma once
#include <cuda_runtime_api.h>

namespace setokim::cuda {

constexpr int kMaxPatches = 4096;  // the density kernel keeps two copies of a row in shared memory (32 KiB)

void LaunchGram(const float* x, int n, int dim, float* gram, cudaStream_t stream);
// Tile shapes of the Gram kernel (all give identical bits); 0 is the default. Returns its name.
int GramVariantCount();
const char* LaunchGramVariant(int variant, const float* x, int n, int dim, float* gram, cudaStream_t stream);
void LaunchDistances(const float* gram, int n, int dim, float* dist, cudaStream_t stream);
void LaunchDensity(const float* dist, int n, int k, float* rho, cudaStream_t stream);
// delta, dmax, scores, centre selection (writes centers[0..L), center_of[n] and *count) and labels.
void LaunchSelect(const float* dist, const float* rho, int n, double threshold, int fallback, int max_tokens,
                  float* delta, float* row_max, float* scores, int* centers, int* center_of, int* count, int* labels,
                  cudaStream_t stream);

}  // namespace setokim::cuda
