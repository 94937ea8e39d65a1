#include "cuda/cuda_stream.h"

#include <utility>

#include "cuda/cuda_check.h"

namespace setokim {

CudaStream::CudaStream() { SETOKIM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }

CudaStream::~CudaStream() {
  if (stream_) cudaStreamDestroy(stream_);  // no throw from a destructor
}

CudaStream::CudaStream(CudaStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

void CudaStream::Synchronize() const { SETOKIM_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

}  // namespace setokim
