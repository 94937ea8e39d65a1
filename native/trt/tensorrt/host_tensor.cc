#include "tensorrt/host_tensor.h"

#include <stdexcept>

namespace setokim {

using nvinfer1::DataType;

size_t HostTensor::ElementSize(const std::string& dtype) {
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "float16") return 2;
  if (dtype == "int64") return 8;
  if (dtype == "int8" || dtype == "uint8" || dtype == "bool") return 1;
  throw std::invalid_argument("unknown dtype '" + dtype + "'");
}

DataType HostTensor::ToTrt(const std::string& dtype) {
  if (dtype == "float32") return DataType::kFLOAT;
  if (dtype == "float16") return DataType::kHALF;
  if (dtype == "int64") return DataType::kINT64;
  if (dtype == "int32") return DataType::kINT32;
  if (dtype == "int8") return DataType::kINT8;
  if (dtype == "uint8") return DataType::kUINT8;
  if (dtype == "bool") return DataType::kBOOL;
  throw std::invalid_argument("unknown dtype '" + dtype + "'");
}

std::string HostTensor::FromTrt(DataType type) {
  switch (type) {
    case DataType::kFLOAT:
      return "float32";
    case DataType::kHALF:
      return "float16";
    case DataType::kINT64:
      return "int64";
    case DataType::kINT32:
      return "int32";
    case DataType::kINT8:
      return "int8";
    case DataType::kUINT8:
      return "uint8";
    case DataType::kBOOL:
      return "bool";
    default:
      // BF16, FP8, INT4, FP4 live inside the graph (Q/DQ); the contract's IO never uses them.
      throw std::invalid_argument("TensorRT IO type " + std::to_string(static_cast<int>(type)) +
                                  " is not supported at a stage boundary");
  }
}

int64_t HostTensor::Count(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) throw std::invalid_argument("a dimension is unresolved (-1)");
    n *= d;
  }
  return n;
}

nvinfer1::Dims HostTensor::ToDims(const std::vector<int64_t>& dims) {
  nvinfer1::Dims out{};
  if (dims.size() > static_cast<size_t>(nvinfer1::Dims::MAX_DIMS)) {
    throw std::invalid_argument("rank " + std::to_string(dims.size()) + " exceeds TensorRT's limit of " +
                                std::to_string(nvinfer1::Dims::MAX_DIMS));
  }
  out.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) out.d[i] = dims[i];
  return out;
}

std::vector<int64_t> HostTensor::FromDims(const nvinfer1::Dims& dims) {
  std::vector<int64_t> out;
  for (int32_t i = 0; i < dims.nbDims; ++i) out.push_back(dims.d[i]);
  return out;
}

}  // namespace setokim
