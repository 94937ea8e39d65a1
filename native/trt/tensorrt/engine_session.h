// One execution context of an engine, with its own CUDA stream, grow-only device buffers and the
// session's resident tensors (cuda/resident_store.h): named IO tensors (setInputShape,
// setTensorAddress) and enqueueV3 on the stream. An input may be a host tensor (copied to the
// device, or on an integrated GPU written into mapped pinned memory the engine reads in place) or a
// resident tensor (its device address, nothing copied); an output may be written into a resident
// tensor at a row offset on the device (a KV cache's new rows) instead of coming back.
// Thread safety: every public method may be called from any thread; calls are serialised by an
// internal mutex because an IExecutionContext is not re-entrant. Destroy only when no call is in
// flight (the Node-API layer keeps a shared_ptr per in-flight call).
#pragma once
#include <NvInferRuntime.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/cuda_stream.h"
#include "cuda/device_buffer.h"
#include "cuda/mapped_host_buffer.h"
#include "cuda/resident_store.h"
#include "tensorrt/engine.h"
#include "tensorrt/host_tensor.h"
#include "tensorrt/trt_ptr.h"

namespace setokim {

// Where an output goes instead of the host: rows at `offset` along `axis` of a resident tensor.
struct RowWrite {
  int64_t handle = 0;
  int axis = 0;
  int64_t offset = 0;
};

struct ResidentSpec {
  int64_t handle = 0;
  std::string dtype;
  std::vector<int64_t> dims;
};

class EngineSession {
 public:
  explicit EngineSession(std::shared_ptr<const Engine> engine);
  EngineSession(const EngineSession&) = delete;
  EngineSession& operator=(const EngineSession&) = delete;

  // Runs once: `inputs` from the host, `resident` inputs by handle; outputs named in `writes` go
  // into resident tensors, every other output comes back. Throws std::runtime_error or
  // std::invalid_argument naming the tensor at fault.
  std::map<std::string, HostTensor> Run(const std::map<std::string, HostTensor>& inputs,
                                        const std::map<std::string, int64_t>& resident = {},
                                        const std::map<std::string, RowWrite>& writes = {});

  // Zero-filled resident tensors; on failure none of them is kept.
  void Allocate(const std::vector<ResidentSpec>& specs);
  void CopyRows(const std::vector<ResidentCopy>& copies);
  HostTensor Read(int64_t handle);
  void Release(const std::vector<int64_t>& handles);

  const Engine& engine() const { return *engine_; }
  // Whether host IO goes through mapped pinned memory (an integrated GPU) instead of copies.
  bool mappedIo() const { return mappedIo_; }

 private:
  // The first optimisation profile whose min..max holds every input shape; throws when none does.
  int32_t PickProfile(const std::map<std::string, std::vector<int64_t>>& shapes) const;
  // Binds one host input: copied into its device buffer, or written into mapped memory.
  void BindHostInput(const std::string& name, const HostTensor& t, cudaStream_t stream);

  std::shared_ptr<const Engine> engine_;  // outlives the context
  CudaStream stream_;
  TrtPtr<nvinfer1::IExecutionContext> context_;
  std::map<std::string, DeviceBuffer> buffers_;
  std::map<std::string, MappedHostBuffer> mapped_;
  ResidentStore residents_;
  bool mappedIo_ = false;
  int32_t profile_ = 0;  // the context starts on profile 0
  std::mutex mu_;
};

}  // namespace setokim
