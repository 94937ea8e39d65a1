#include "cuda/mapped_host_buffer.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "cuda/cuda_check.h"

namespace setokim {

MappedHostBuffer::~MappedHostBuffer() { Release(); }

MappedHostBuffer::MappedHostBuffer(MappedHostBuffer&& other) noexcept
    : host_(std::exchange(other.host_, nullptr)),
      device_(std::exchange(other.device_, nullptr)),
      capacity_(std::exchange(other.capacity_, 0)) {}

MappedHostBuffer& MappedHostBuffer::operator=(MappedHostBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    host_ = std::exchange(other.host_, nullptr);
    device_ = std::exchange(other.device_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

bool MappedHostBuffer::PreferredOn(int device) {
  cudaDeviceProp prop{};
  SETOKIM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.integrated != 0 && prop.canMapHostMemory != 0;
}

void MappedHostBuffer::Reserve(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= capacity_) return;
  Release();
  SETOKIM_CUDA_CHECK(cudaHostAlloc(&host_, bytes, cudaHostAllocMapped));
  capacity_ = bytes;
  SETOKIM_CUDA_CHECK(cudaHostGetDevicePointer(&device_, host_, 0));
}

void MappedHostBuffer::Release() noexcept {
  if (host_) cudaFreeHost(host_);
  host_ = nullptr;
  device_ = nullptr;
  capacity_ = 0;
}

}  // namespace setokim
