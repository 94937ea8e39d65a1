// Every nvinfer1 object lives in a smart pointer. TensorRT 10 and later destroy objects with
// `delete` (destroy() is gone), so std::unique_ptr's default deleter is right.
// Declare owners in creation order (logger, runtime, engine, context) so they die in reverse.
#pragma once
#include <NvInferVersion.h>

#include <memory>
#include <stdexcept>
#include <string>

// Named IO tensors, enqueueV3, strongly typed networks and IProgressMonitor: TensorRT 10 and later.
#if NV_TENSORRT_MAJOR < 10
#error "setokim's TensorRT backend needs TensorRT 10 or later (JetPack 6); build with SETOKIM_TENSORRT=OFF on JetPack 5"
#endif

namespace setokim {

template <typename T>
using TrtPtr = std::unique_ptr<T>;

// Takes ownership of a TensorRT factory's result; a null result throws with `what` and `detail`
// (typically the logger's last error). Any thread.
template <typename T>
TrtPtr<T> TakeTrt(T* raw, const char* what, const std::string& detail = "") {
  if (!raw) {
    throw std::runtime_error(std::string(what) + " failed" + (detail.empty() ? "" : ": " + detail));
  }
  return TrtPtr<T>(raw);
}

}  // namespace setokim
