#include "tensorrt/engine.h"

#include <fstream>
#include <iterator>
#include <stdexcept>

#include "cuda/cuda_check.h"
#include "tensorrt/host_tensor.h"

namespace setokim {

namespace {
std::vector<char> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open engine plan " + path);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw std::runtime_error("engine plan " + path + " is empty");
  return bytes;
}
}  // namespace

std::shared_ptr<Engine> Engine::Load(const std::string& planPath, int device) {
  SETOKIM_CUDA_CHECK(cudaSetDevice(device));
  const std::vector<char> plan = ReadFile(planPath);
  std::shared_ptr<Engine> e(new Engine());
  e->device_ = device;
  e->logger_ = std::make_unique<Logger>(nvinfer1::ILogger::Severity::kWARNING);
  e->runtime_ = TakeTrt(nvinfer1::createInferRuntime(*e->logger_), "createInferRuntime");
  // There is no compatibility preflight: a plan from another TensorRT or GPU fails here.
  e->engine_ = TakeTrt(e->runtime_->deserializeCudaEngine(plan.data(), plan.size()), "deserializing the engine plan",
                       e->logger_->LastError());
  const int32_t n = e->engine_->getNbIOTensors();
  for (int32_t i = 0; i < n; ++i) {
    IoTensorInfo info;
    info.name = e->engine_->getIOTensorName(i);
    info.isInput = e->engine_->getTensorIOMode(info.name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
    info.dtype = HostTensor::FromTrt(e->engine_->getTensorDataType(info.name.c_str()));
    info.shape = HostTensor::FromDims(e->engine_->getTensorShape(info.name.c_str()));
    e->io_.push_back(std::move(info));
  }
  return e;
}

}  // namespace setokim
