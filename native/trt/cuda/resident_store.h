// The resident tensors of one session (src/engine/resident.ts): device buffers kept between runs
// under handles the JavaScript side chose, fed to runs by handle and written with output rows,
// never copied to the host except when read. Owns the buffers (RAII); freed on Release or with the
// store.
// Thread safety: not internally synchronised; the owning EngineSession calls it under its mutex.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cuda/device_buffer.h"

namespace setokim {

struct ResidentTensor {
  std::string dtype;
  std::vector<int64_t> dims;
  size_t elementSize = 0;
  size_t bytes = 0;
  DeviceBuffer buffer;
};

// One copy between two resident tensors (RowCopy's arguments, by handle).
struct ResidentCopy {
  int64_t from = 0, to = 0;
  int axis = 0;
  int64_t rows = 0, fromOffset = 0, toOffset = 0;
};

class ResidentStore {
 public:
  ResidentStore() = default;
  ResidentStore(const ResidentStore&) = delete;
  ResidentStore& operator=(const ResidentStore&) = delete;

  // A zero-filled tensor under `handle` (which must be new). Throws std::invalid_argument or on a
  // CUDA error (out of device memory).
  void Allocate(int64_t handle, const std::string& dtype, const std::vector<int64_t>& dims, size_t elementSize,
                cudaStream_t stream);
  // Enqueues every copy in order; all handles are checked before any is issued.
  void Copy(const std::vector<ResidentCopy>& copies, cudaStream_t stream);
  // The tensor under `handle`; throws std::invalid_argument naming it when there is none.
  ResidentTensor& Get(int64_t handle);
  // Frees the tensors; unknown handles are ignored (a release may race a failed allocation).
  void Release(const std::vector<int64_t>& handles);

  size_t bytes() const;
  size_t count() const { return tensors_.size(); }

 private:
  std::map<int64_t, ResidentTensor> tensors_;
};

}  // namespace setokim
