#include "tensorrt/engine_session.h"

#include <stdexcept>

#include "tensorrt/cuda_check.h"

namespace setokim {

EngineSession::EngineSession(std::shared_ptr<const Engine> engine) : engine_(std::move(engine)) {
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  context_ = TakeTrt(engine_->engine().createExecutionContext(), "createExecutionContext",
                     engine_->logger().LastError());
}

int32_t EngineSession::PickProfile(const std::map<std::string, HostTensor>& inputs) const {
  using nvinfer1::OptProfileSelector;
  nvinfer1::ICudaEngine& e = engine_->engine();
  const int32_t n = e.getNbOptimizationProfiles();
  for (int32_t p = 0; p < n; ++p) {
    bool fits = true;
    for (const IoTensorInfo& io : engine_->io()) {
      if (!io.isInput) continue;
      auto it = inputs.find(io.name);
      if (it == inputs.end()) throw std::invalid_argument("missing input '" + io.name + "'");
      const nvinfer1::Dims lo = e.getProfileShape(io.name.c_str(), p, OptProfileSelector::kMIN);
      const nvinfer1::Dims hi = e.getProfileShape(io.name.c_str(), p, OptProfileSelector::kMAX);
      const std::vector<int64_t>& dims = it->second.dims;
      if (lo.nbDims != static_cast<int32_t>(dims.size())) {
        throw std::invalid_argument("input '" + io.name + "' must have rank " + std::to_string(lo.nbDims));
      }
      for (int32_t k = 0; k < lo.nbDims && fits; ++k) fits = dims[k] >= lo.d[k] && dims[k] <= hi.d[k];
      if (!fits) break;
    }
    if (fits) return p;
  }
  throw std::invalid_argument("the input shapes fit none of the engine's " + std::to_string(n) +
                              " optimisation profiles; rebuild the engine with larger limits");
}

std::map<std::string, HostTensor> EngineSession::Run(const std::map<std::string, HostTensor>& inputs) {
  std::lock_guard<std::mutex> lock(mu_);
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  const cudaStream_t stream = stream_.get();
  const int32_t profile = PickProfile(inputs);
  if (profile != profile_) {
    if (!context_->setOptimizationProfileAsync(profile, stream)) {
      throw std::runtime_error("cannot switch to optimisation profile " + std::to_string(profile) + ": " +
                               engine_->logger().LastError());
    }
    profile_ = profile;
  }

  for (const IoTensorInfo& io : engine_->io()) {
    if (!io.isInput) continue;
    auto it = inputs.find(io.name);
    if (it == inputs.end()) throw std::invalid_argument("missing input '" + io.name + "'");
    const HostTensor& t = it->second;
    if (t.dtype != io.dtype) {
      throw std::invalid_argument("input '" + io.name + "' must be " + io.dtype + ", got " + t.dtype);
    }
    const size_t bytes = static_cast<size_t>(HostTensor::Count(t.dims)) * HostTensor::ElementSize(t.dtype);
    if (bytes != t.bytes.size()) throw std::invalid_argument("input '" + io.name + "' has the wrong byte size");
    if (!context_->setInputShape(io.name.c_str(), HostTensor::ToDims(t.dims))) {
      throw std::invalid_argument("input '" + io.name + "' shape is outside the engine's profile: " +
                                  engine_->logger().LastError());
    }
    DeviceBuffer& buf = buffers_[io.name];
    buf.Reserve(bytes);
    if (bytes) SETOKIM_CUDA_CHECK(cudaMemcpyAsync(buf.data(), t.bytes.data(), bytes, cudaMemcpyHostToDevice, stream));
    context_->setTensorAddress(io.name.c_str(), buf.data());
  }
  if (!context_->allInputDimensionsSpecified()) throw std::invalid_argument("not every input shape is set");

  std::map<std::string, HostTensor> outputs;
  for (const IoTensorInfo& io : engine_->io()) {
    if (io.isInput) continue;
    HostTensor& out = outputs[io.name];
    out.dtype = io.dtype;
    out.dims = HostTensor::FromDims(context_->getTensorShape(io.name.c_str()));
    for (int64_t d : out.dims) {
      if (d < 0) throw std::runtime_error("output '" + io.name + "' has a data-dependent shape, which is not supported");
    }
    out.bytes.resize(static_cast<size_t>(HostTensor::Count(out.dims)) * HostTensor::ElementSize(out.dtype));
    DeviceBuffer& buf = buffers_[io.name];
    buf.Reserve(out.bytes.size());
    context_->setTensorAddress(io.name.c_str(), buf.data());
  }

  if (!context_->enqueueV3(stream)) {
    throw std::runtime_error("enqueueV3 failed: " + engine_->logger().LastError());
  }
  for (auto& [name, out] : outputs) {
    if (out.bytes.empty()) continue;
    SETOKIM_CUDA_CHECK(cudaMemcpyAsync(out.bytes.data(), buffers_[name].data(), out.bytes.size(),
                                       cudaMemcpyDeviceToHost, stream));
  }
  stream_.Synchronize();
  return outputs;
}

}  // namespace setokim
