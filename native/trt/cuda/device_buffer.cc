#include "cuda/device_buffer.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "cuda/cuda_check.h"

namespace setokim {

DeviceBuffer::~DeviceBuffer() { Release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), capacity_(std::exchange(other.capacity_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

void DeviceBuffer::Reserve(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= capacity_) return;
  Release();
  SETOKIM_CUDA_CHECK(cudaMalloc(&data_, bytes));
  capacity_ = bytes;
}

void DeviceBuffer::Release() noexcept {
  if (data_) cudaFree(data_);
  data_ = nullptr;
  capacity_ = 0;
}

}  // namespace setokim
