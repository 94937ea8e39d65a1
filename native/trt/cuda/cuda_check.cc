#include "cuda/cuda_check.h"

#include <stdexcept>
#include <string>

namespace setokim {

void CheckCuda(cudaError_t status, const char* expr, const char* file, int line) {
  if (status == cudaSuccess) return;
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
                           ") in " + expr + " at " + file + ":" + std::to_string(line));
}

}  // namespace setokim
