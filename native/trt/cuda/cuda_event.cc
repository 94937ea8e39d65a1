#include "cuda/cuda_event.h"

#include <utility>

#include "cuda/cuda_check.h"

namespace setokim {

CudaEvent::CudaEvent() { SETOKIM_CUDA_CHECK(cudaEventCreate(&event_)); }

CudaEvent::~CudaEvent() {
  if (event_) cudaEventDestroy(event_);
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    if (event_) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

void CudaEvent::Record(cudaStream_t stream) { SETOKIM_CUDA_CHECK(cudaEventRecord(event_, stream)); }

void CudaEvent::Synchronize() const { SETOKIM_CUDA_CHECK(cudaEventSynchronize(event_)); }

float CudaEvent::ElapsedSince(const CudaEvent& start) const {
  float ms = 0.f;
  SETOKIM_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

}  // namespace setokim
