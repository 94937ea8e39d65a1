// A deserialised TensorRT engine (plan) and the runtime that owns it. Load() refuses a null engine
// with TensorRT's own error; the manifest check happens before, in JavaScript (engine-manifest.ts).
// Thread safety: Load() on any thread (it selects `device` on that thread). After loading, the
// const methods are safe from any thread; sessions are created from a shared_ptr<const Engine>.
#pragma once
#include <NvInferRuntime.h>

#include <memory>
#include <string>
#include <vector>

#include "tensorrt/logger.h"
#include "tensorrt/trt_ptr.h"

namespace setokim {

struct IoTensorInfo {
  std::string name;
  bool isInput = false;
  std::string dtype;           // JS dtype name
  std::vector<int64_t> shape;  // -1 where dynamic
};

class Engine {
 public:
  // Reads and deserialises `planPath` on CUDA device `device`. Throws std::runtime_error.
  static std::shared_ptr<Engine> Load(const std::string& planPath, int device);

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const std::vector<IoTensorInfo>& io() const { return io_; }
  int device() const { return device_; }
  nvinfer1::ICudaEngine& engine() const { return *engine_; }
  Logger& logger() const { return *logger_; }

 private:
  Engine() = default;
  // Declaration order is destruction order reversed: logger outlives runtime outlives engine.
  std::unique_ptr<Logger> logger_;
  TrtPtr<nvinfer1::IRuntime> runtime_;
  TrtPtr<nvinfer1::ICudaEngine> engine_;
  std::vector<IoTensorInfo> io_;
  int device_ = 0;
};

}  // namespace setokim
