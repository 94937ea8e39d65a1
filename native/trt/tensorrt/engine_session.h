// One execution context of an engine, with its own CUDA stream and grow-only device buffers:
// named IO tensors (setInputShape, setTensorAddress) and enqueueV3 on the stream.
// Thread safety: Run() may be called from any thread; calls are serialised by an internal mutex
// because an IExecutionContext is not re-entrant. Destroy only when no Run() is in flight
// (the Node-API layer keeps a shared_ptr per in-flight run).
#pragma once
#include <NvInferRuntime.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "tensorrt/cuda_stream.h"
#include "tensorrt/device_buffer.h"
#include "tensorrt/engine.h"
#include "tensorrt/host_tensor.h"
#include "tensorrt/trt_ptr.h"

namespace setokim {

class EngineSession {
 public:
  explicit EngineSession(std::shared_ptr<const Engine> engine);
  EngineSession(const EngineSession&) = delete;
  EngineSession& operator=(const EngineSession&) = delete;

  // Copies inputs to the device, runs, copies every output back. Throws std::runtime_error or
  // std::invalid_argument naming the tensor at fault.
  std::map<std::string, HostTensor> Run(const std::map<std::string, HostTensor>& inputs);

  const Engine& engine() const { return *engine_; }

 private:
  // The first optimisation profile whose min..max holds every input shape; throws when none does.
  int32_t PickProfile(const std::map<std::string, HostTensor>& inputs) const;

  std::shared_ptr<const Engine> engine_;  // outlives the context
  CudaStream stream_;
  TrtPtr<nvinfer1::IExecutionContext> context_;
  std::map<std::string, DeviceBuffer> buffers_;
  int32_t profile_ = 0;  // the context starts on profile 0
  std::mutex mu_;
};

}  // namespace setokim
