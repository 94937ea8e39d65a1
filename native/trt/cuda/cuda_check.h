// CUDA errors become std::runtime_error carrying the failed call and its file:line, on any thread.
// The library never exits; the Node-API layer turns the exception into a JS error on the JS thread.
#pragma once
#include <cuda_runtime_api.h>

namespace setokim {

// Throws std::runtime_error when `status` is not cudaSuccess. Any thread.
void CheckCuda(cudaError_t status, const char* expr, const char* file, int line);

}  // namespace setokim

#define SETOKIM_CUDA_CHECK(expr) ::setokim::CheckCuda((expr), #expr, __FILE__, __LINE__)
