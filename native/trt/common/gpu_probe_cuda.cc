// Counts the GPUs the CUDA runtime can see. No GPU or no driver is a normal answer, not an error.
#include <cuda_runtime_api.h>

#include "common/capabilities.h"

namespace setokim {

void ProbeGpus(Capabilities& caps) {
  cudaDriverGetVersion(&caps.cudaDriverVersion);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    caps.gpuProbeError = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    caps.gpus.push_back(GpuInfo{i, prop.name, prop.major, prop.minor, prop.totalGlobalMem});
  }
  if (count == 0) caps.gpuProbeError = "no CUDA device found";
}

}  // namespace setokim
