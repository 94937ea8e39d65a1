#include "tensorrt/engine_session.h"

#include <cstring>
#include <stdexcept>

#include "cuda/cuda_check.h"
#include "cuda/row_copy.h"

namespace setokim {

EngineSession::EngineSession(std::shared_ptr<const Engine> engine) : engine_(std::move(engine)) {
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  mappedIo_ = MappedHostBuffer::PreferredOn(engine_->device());
  context_ =
      TakeTrt(engine_->engine().createExecutionContext(), "createExecutionContext", engine_->logger().LastError());
}

int32_t EngineSession::PickProfile(const std::map<std::string, std::vector<int64_t>>& shapes) const {
  using nvinfer1::OptProfileSelector;
  nvinfer1::ICudaEngine& e = engine_->engine();
  const int32_t n = e.getNbOptimizationProfiles();
  for (int32_t p = 0; p < n; ++p) {
    bool fits = true;
    for (const IoTensorInfo& io : engine_->io()) {
      if (!io.isInput) continue;
      auto it = shapes.find(io.name);
      if (it == shapes.end()) throw std::invalid_argument("missing input '" + io.name + "'");
      const nvinfer1::Dims lo = e.getProfileShape(io.name.c_str(), p, OptProfileSelector::kMIN);
      const nvinfer1::Dims hi = e.getProfileShape(io.name.c_str(), p, OptProfileSelector::kMAX);
      const std::vector<int64_t>& dims = it->second;
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

void EngineSession::BindHostInput(const std::string& name, const HostTensor& t, cudaStream_t stream) {
  const size_t bytes = t.bytes.size();
  if (mappedIo_) {
    // Integrated GPU: the engine reads the pinned host pages in place; no device copy.
    MappedHostBuffer& m = mapped_[name];
    m.Reserve(bytes);
    if (bytes) std::memcpy(m.host(), t.bytes.data(), bytes);
    context_->setTensorAddress(name.c_str(), m.device());
    return;
  }
  DeviceBuffer& buf = buffers_[name];
  buf.Reserve(bytes);
  if (bytes) SETOKIM_CUDA_CHECK(cudaMemcpyAsync(buf.data(), t.bytes.data(), bytes, cudaMemcpyHostToDevice, stream));
  context_->setTensorAddress(name.c_str(), buf.data());
}

std::map<std::string, HostTensor> EngineSession::Run(const std::map<std::string, HostTensor>& inputs,
                                                     const std::map<std::string, int64_t>& resident,
                                                     const std::map<std::string, RowWrite>& writes) {
  std::lock_guard<std::mutex> lock(mu_);
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  const cudaStream_t stream = stream_.get();

  // Every input's dtype and shape, wherever its bytes are.
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const IoTensorInfo& io : engine_->io()) {
    if (!io.isInput) continue;
    auto h = inputs.find(io.name);
    auto r = resident.find(io.name);
    if ((h == inputs.end()) == (r == resident.end())) {
      throw std::invalid_argument("input '" + io.name + "' must be given once, from the host or as a resident tensor");
    }
    const std::string& dtype = h != inputs.end() ? h->second.dtype : residents_.Get(r->second).dtype;
    if (dtype != io.dtype)
      throw std::invalid_argument("input '" + io.name + "' must be " + io.dtype + ", got " + dtype);
    shapes[io.name] = h != inputs.end() ? h->second.dims : residents_.Get(r->second).dims;
    if (h != inputs.end()) {
      const size_t bytes = static_cast<size_t>(HostTensor::Count(h->second.dims)) * HostTensor::ElementSize(dtype);
      if (bytes != h->second.bytes.size())
        throw std::invalid_argument("input '" + io.name + "' has the wrong byte size");
    }
  }

  const int32_t profile = PickProfile(shapes);
  if (profile != profile_) {
    if (!context_->setOptimizationProfileAsync(profile, stream)) {
      throw std::runtime_error("cannot switch to optimisation profile " + std::to_string(profile) + ": " +
                               engine_->logger().LastError());
    }
    profile_ = profile;
  }
  for (const IoTensorInfo& io : engine_->io()) {
    if (!io.isInput) continue;
    if (!context_->setInputShape(io.name.c_str(), HostTensor::ToDims(shapes[io.name]))) {
      throw std::invalid_argument("input '" + io.name +
                                  "' shape is outside the engine's profile: " + engine_->logger().LastError());
    }
    auto r = resident.find(io.name);
    if (r != resident.end())
      context_->setTensorAddress(io.name.c_str(), residents_.Get(r->second).buffer.data());
    else
      BindHostInput(io.name, inputs.at(io.name), stream);
  }
  if (!context_->allInputDimensionsSpecified()) throw std::invalid_argument("not every input shape is set");

  std::map<std::string, HostTensor> outputs;
  std::vector<std::pair<RowCopy, std::pair<const void*, void*>>> rowWrites;
  for (const IoTensorInfo& io : engine_->io()) {
    if (io.isInput) continue;
    const std::vector<int64_t> dims = HostTensor::FromDims(context_->getTensorShape(io.name.c_str()));
    for (int64_t d : dims) {
      if (d < 0)
        throw std::runtime_error("output '" + io.name + "' has a data-dependent shape, which is not supported");
    }
    const size_t bytes = static_cast<size_t>(HostTensor::Count(dims)) * HostTensor::ElementSize(io.dtype);
    auto w = writes.find(io.name);
    if (w != writes.end() || !mappedIo_) {
      DeviceBuffer& buf = buffers_[io.name];
      buf.Reserve(bytes);
      context_->setTensorAddress(io.name.c_str(), buf.data());
    } else {
      MappedHostBuffer& m = mapped_[io.name];
      m.Reserve(bytes);
      context_->setTensorAddress(io.name.c_str(), m.device());
    }
    if (w != writes.end()) {
      ResidentTensor& into = residents_.Get(w->second.handle);
      if (into.dtype != io.dtype)
        throw std::invalid_argument("output '" + io.name + "' is " + io.dtype + ", the resident tensor " + into.dtype);
      const int axis = w->second.axis;
      if (axis < 0 || axis >= static_cast<int>(dims.size()))
        throw std::invalid_argument("output '" + io.name + "': no axis " + std::to_string(axis));
      RowCopy plan = RowCopy::Plan(dims, into.dims, into.elementSize, axis, dims[axis], 0, w->second.offset);
      rowWrites.push_back({plan, {buffers_[io.name].data(), into.buffer.data()}});
      continue;
    }
    HostTensor& out = outputs[io.name];
    out.dtype = io.dtype;
    out.dims = dims;
    out.bytes.resize(bytes);
  }

  if (!context_->enqueueV3(stream)) {
    throw std::runtime_error("enqueueV3 failed: " + engine_->logger().LastError());
  }
  for (const auto& [plan, ptrs] : rowWrites) plan.Enqueue(ptrs.first, ptrs.second, stream);  // stays on the device
  for (auto& [name, out] : outputs) {
    if (out.bytes.empty() || mappedIo_) continue;
    SETOKIM_CUDA_CHECK(
        cudaMemcpyAsync(out.bytes.data(), buffers_[name].data(), out.bytes.size(), cudaMemcpyDeviceToHost, stream));
  }
  stream_.Synchronize();
  if (mappedIo_) {
    for (auto& [name, out] : outputs) {
      if (!out.bytes.empty()) std::memcpy(out.bytes.data(), mapped_[name].host(), out.bytes.size());
    }
  }
  return outputs;
}

void EngineSession::Allocate(const std::vector<ResidentSpec>& specs) {
  std::lock_guard<std::mutex> lock(mu_);
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  std::vector<int64_t> made;
  try {
    for (const ResidentSpec& s : specs) {
      residents_.Allocate(s.handle, s.dtype, s.dims, HostTensor::ElementSize(s.dtype), stream_.get());
      made.push_back(s.handle);
    }
    stream_.Synchronize();
  } catch (...) {
    residents_.Release(made);
    throw;
  }
}

void EngineSession::CopyRows(const std::vector<ResidentCopy>& copies) {
  std::lock_guard<std::mutex> lock(mu_);
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  residents_.Copy(copies, stream_.get());
  stream_.Synchronize();
}

HostTensor EngineSession::Read(int64_t handle) {
  std::lock_guard<std::mutex> lock(mu_);
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  const ResidentTensor& t = residents_.Get(handle);
  HostTensor out;
  out.dtype = t.dtype;
  out.dims = t.dims;
  out.bytes.resize(t.bytes);
  if (t.bytes)
    SETOKIM_CUDA_CHECK(
        cudaMemcpyAsync(out.bytes.data(), t.buffer.data(), t.bytes, cudaMemcpyDeviceToHost, stream_.get()));
  stream_.Synchronize();
  return out;
}

void EngineSession::Release(const std::vector<int64_t>& handles) {
  std::lock_guard<std::mutex> lock(mu_);
  SETOKIM_CUDA_CHECK(cudaSetDevice(engine_->device()));
  residents_.Release(handles);
}

}  // namespace setokim
