// Pinned host memory mapped into the GPU's address space (cudaHostAlloc with cudaHostAllocMapped):
// on an integrated GPU (Jetson: CPU and GPU share the DRAM, cudaDeviceProp.integrated) a kernel
// reads and writes it in place, so a stage's host inputs and outputs need no cudaMemcpy to or from
// a device copy. Grow-only like DeviceBuffer. Non-copyable, movable.
// Thread safety: any thread, one at a time per buffer (the owning session serialises runs).
#pragma once
#include <cstddef>

namespace setokim {

class MappedHostBuffer {
 public:
  MappedHostBuffer() = default;
  ~MappedHostBuffer();
  MappedHostBuffer(const MappedHostBuffer&) = delete;
  MappedHostBuffer& operator=(const MappedHostBuffer&) = delete;
  MappedHostBuffer(MappedHostBuffer&& other) noexcept;
  MappedHostBuffer& operator=(MappedHostBuffer&& other) noexcept;

  // Whether CUDA device `device` is integrated with the host memory and can map it: the case
  // where mapped IO replaces copies. Throws on a CUDA error. Any thread.
  static bool PreferredOn(int device);

  // Ensures at least `bytes` (at least 1); old contents are lost on growth. Throws on a CUDA error.
  void Reserve(size_t bytes);
  void* host() const { return host_; }
  // The same memory as the GPU addresses it (valid for kernels and TensorRT tensor addresses).
  void* device() const { return device_; }
  size_t capacity() const { return capacity_; }

 private:
  void Release() noexcept;
  void* host_ = nullptr;
  void* device_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace setokim
