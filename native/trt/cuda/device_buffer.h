// An owned block of GPU memory that only grows (Reserve), so repeated runs with varying shapes
// reallocate only when a tensor outgrows its buffer. Non-copyable, movable.
// Thread safety: any thread, one at a time per buffer (the owning session serialises runs).
#pragma once
#include <cstddef>

namespace setokim {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;

  // Ensures at least `bytes` (at least 1, so a pointer always exists); old contents are lost on growth.
  void Reserve(size_t bytes);
  void* data() const { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  void Release() noexcept;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace setokim
