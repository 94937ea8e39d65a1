// An owned CUDA event for timing work on a stream. Non-copyable, movable.
// Thread safety: any thread, one at a time per event.
#pragma once
#include <cuda_runtime_api.h>

namespace setokim {

class CudaEvent {
 public:
  CudaEvent();
  ~CudaEvent();
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;

  cudaEvent_t get() const { return event_; }
  void Record(cudaStream_t stream);
  void Synchronize() const;
  // Milliseconds between `start` and this event; both must have completed.
  float ElapsedSince(const CudaEvent& start) const;

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace setokim
