// What this build of the addon was compiled with, and what the machine has right now.
// Thread safety: Probe() may be called from any thread; it holds no state.
#pragma once
#include <string>
#include <vector>

namespace setokim {

struct GpuInfo {
  int index = 0;
  std::string name;
  int major = 0;  // compute capability
  int minor = 0;
  size_t totalMemoryBytes = 0;
};

struct Capabilities {
  // Compiled in.
  bool cuda = false;
  std::string cudaVersion;        // nvcc version the kernels were built with
  std::string cudaArchitectures;  // e.g. "87;110"
  bool tensorrt = false;
  std::string tensorrtVersion;  // headers the backend was compiled against
  std::string simd;             // vector ISA the CPU kernels use on this CPU (avx2, sse2, neon)
  // Present now.
  std::vector<GpuInfo> gpus;
  int cudaDriverVersion = 0;           // 0 when there is no driver
  std::string gpuProbeError;           // why no GPU was found, when none was
  std::string tensorrtLibraryVersion;  // libnvinfer actually loaded
};

Capabilities ProbeCapabilities();

// CUDA tier only (gpu_probe_cuda.cc); declared here so capabilities.cc stays CUDA-free.
void ProbeGpus(Capabilities& caps);

}  // namespace setokim
