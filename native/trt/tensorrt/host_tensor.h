// A tensor in host memory as the Node-API layer hands it over: a plain struct copied from the JS
// values on the JS thread, so the worker thread never touches JS objects (as sharp does).
// Thread safety: a value type; no shared state.
#pragma once
#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace setokim {

struct HostTensor {
  std::string dtype;  // the JS name: float32, float16, int64, int32, int8, uint8, bool
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;  // element data, tightly packed

  // Bytes one element of `dtype` takes; throws std::invalid_argument for an unknown dtype.
  static size_t ElementSize(const std::string& dtype);
  // TensorRT's type for a JS dtype, and back; throw for types the backend does not carry.
  static nvinfer1::DataType ToTrt(const std::string& dtype);
  static std::string FromTrt(nvinfer1::DataType type);
  // Number of elements; throws for a negative (unresolved) dim.
  static int64_t Count(const std::vector<int64_t>& dims);
  static nvinfer1::Dims ToDims(const std::vector<int64_t>& dims);
  static std::vector<int64_t> FromDims(const nvinfer1::Dims& dims);
};

}  // namespace setokim
