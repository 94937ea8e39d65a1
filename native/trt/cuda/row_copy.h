// Rows along one axis of a dense row-major tensor, copied into another tensor of the same shape
// but that axis (a KV cache's new rows into the cache at the write position, a cached prefix into
// a query's cache): for every index of the axes before `axis`, one contiguous block of
// rows x (product of the later axes) elements. On the GPU that is one cudaMemcpy2DAsync (height =
// the outer count, pitches = each tensor's row block). Plan() is plain arithmetic and checks the
// shapes; Enqueue() issues the copy.
// Thread safety: Plan on any thread; Enqueue from the thread that owns the stream's work.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace setokim {

class RowCopy {
 public:
  // Copies `rows` rows along `axis` from `src` (at srcOffset) into `dst` (at dstOffset); dims are
  // the tensors' shapes, elementSize the bytes of one element. Throws std::invalid_argument when
  // the shapes differ off the axis or the rows overrun either tensor.
  static RowCopy Plan(const std::vector<int64_t>& srcDims, const std::vector<int64_t>& dstDims, size_t elementSize,
                      int axis, int64_t rows, int64_t srcOffset, int64_t dstOffset);

  // Enqueues the copy between device (or mapped) pointers on `stream`. Throws on a CUDA error.
  void Enqueue(const void* src, void* dst, cudaStream_t stream) const;

  size_t height() const { return height_; }     // blocks: the product of the axes before `axis`
  size_t widthBytes() const { return width_; }  // bytes of one block (rows x inner x elementSize)
  size_t srcPitchBytes() const { return srcPitch_; }
  size_t dstPitchBytes() const { return dstPitch_; }
  size_t srcStartBytes() const { return srcStart_; }
  size_t dstStartBytes() const { return dstStart_; }

 private:
  size_t height_ = 0, width_ = 0, srcPitch_ = 0, dstPitch_ = 0, srcStart_ = 0, dstStart_ = 0;
};

}  // namespace setokim
