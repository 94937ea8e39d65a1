#include "common/capabilities.h"

#include "setok/gram_cpu.h"

#ifdef SETOKIM_WITH_TENSORRT
#include <NvInferVersion.h>
#include <NvInferRuntime.h>
#endif

namespace setokim {

Capabilities ProbeCapabilities() {
  Capabilities caps;
  caps.simd = GramIsa();  // what the CPU kernels run with here (AVX2 is picked at run time on x86)
#ifdef SETOKIM_WITH_CUDA
  caps.cuda = true;
  caps.cudaVersion = SETOKIM_CUDA_VERSION;
#ifdef SETOKIM_CUDA_ARCHITECTURES
  caps.cudaArchitectures = SETOKIM_CUDA_ARCHITECTURES;
#endif
  ProbeGpus(caps);
#else
  caps.gpuProbeError = "the addon was built without CUDA (SETOKIM_CUDA=OFF or no nvcc)";
#endif
#ifdef SETOKIM_WITH_TENSORRT
  caps.tensorrt = true;
  caps.tensorrtVersion = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                         std::to_string(NV_TENSORRT_PATCH);
  const int v = getInferLibVersion();  // e.g. 100300 for 10.3.0
  caps.tensorrtLibraryVersion =
      std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
#endif
  return caps;
}

}  // namespace setokim
