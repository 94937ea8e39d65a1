// An owned CUDA stream (non-blocking), destroyed with its owner. Non-copyable, movable.
// Thread safety: create and destroy on any thread; Synchronize may be called from any thread, but
// work on one stream is issued by one thread at a time (the owner serialises it).
#pragma once
#include <cuda_runtime_api.h>

namespace setokim {

class CudaStream {
 public:
  CudaStream();
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;

  cudaStream_t get() const { return stream_; }
  // Blocks until all work on the stream is done; throws on a CUDA error.
  void Synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace setokim
