#include "cuda/row_copy.h"

#include <stdexcept>
#include <string>

#include "cuda/cuda_check.h"

namespace setokim {

namespace {
std::string Shape(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}
}  // namespace

RowCopy RowCopy::Plan(const std::vector<int64_t>& srcDims, const std::vector<int64_t>& dstDims, size_t elementSize,
                      int axis, int64_t rows, int64_t srcOffset, int64_t dstOffset) {
  if (axis < 0 || axis >= static_cast<int>(srcDims.size()) || srcDims.size() != dstDims.size()) {
    throw std::invalid_argument("row copy: axis " + std::to_string(axis) + " of " + Shape(srcDims) + " into " +
                                Shape(dstDims));
  }
  size_t outer = 1, inner = 1;
  for (size_t i = 0; i < srcDims.size(); ++i) {
    if (srcDims[i] < 0 || dstDims[i] < 0) throw std::invalid_argument("row copy: a dimension is unresolved");
    if (static_cast<int>(i) == axis) continue;
    if (srcDims[i] != dstDims[i]) {
      throw std::invalid_argument("row copy: " + Shape(srcDims) + " and " + Shape(dstDims) + " differ off axis " +
                                  std::to_string(axis));
    }
    if (static_cast<int>(i) < axis)
      outer *= static_cast<size_t>(srcDims[i]);
    else
      inner *= static_cast<size_t>(srcDims[i]);
  }
  if (rows < 0 || srcOffset < 0 || dstOffset < 0 || srcOffset + rows > srcDims[axis] ||
      dstOffset + rows > dstDims[axis]) {
    throw std::invalid_argument("row copy: " + std::to_string(rows) + " rows from row " + std::to_string(srcOffset) +
                                " of " + Shape(srcDims) + " into row " + std::to_string(dstOffset) + " of " +
                                Shape(dstDims) + " overrun axis " + std::to_string(axis));
  }
  const size_t row = inner * elementSize;
  RowCopy c;
  c.height_ = outer;
  c.width_ = static_cast<size_t>(rows) * row;
  c.srcPitch_ = static_cast<size_t>(srcDims[axis]) * row;
  c.dstPitch_ = static_cast<size_t>(dstDims[axis]) * row;
  c.srcStart_ = static_cast<size_t>(srcOffset) * row;
  c.dstStart_ = static_cast<size_t>(dstOffset) * row;
  return c;
}

void RowCopy::Enqueue(const void* src, void* dst, cudaStream_t stream) const {
  if (width_ == 0 || height_ == 0) return;
  SETOKIM_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(dst) + dstStart_, dstPitch_,
                                       static_cast<const char*>(src) + srcStart_, srcPitch_, width_, height_,
                                       cudaMemcpyDeviceToDevice, stream));
}

}  // namespace setokim
