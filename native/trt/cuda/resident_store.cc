#include "cuda/resident_store.h"

#include <stdexcept>

#include "cuda/cuda_check.h"
#include "cuda/row_copy.h"

namespace setokim {

void ResidentStore::Allocate(int64_t handle, const std::string& dtype, const std::vector<int64_t>& dims,
                             size_t elementSize, cudaStream_t stream) {
  if (tensors_.count(handle))
    throw std::invalid_argument("resident tensor #" + std::to_string(handle) + " exists already");
  size_t count = 1;
  for (int64_t d : dims) {
    if (d < 0) throw std::invalid_argument("a resident tensor needs non-negative dims");
    count *= static_cast<size_t>(d);
  }
  ResidentTensor t;
  t.dtype = dtype;
  t.dims = dims;
  t.elementSize = elementSize;
  t.bytes = count * elementSize;
  t.buffer.Reserve(t.bytes);
  if (t.bytes) SETOKIM_CUDA_CHECK(cudaMemsetAsync(t.buffer.data(), 0, t.bytes, stream));
  tensors_.emplace(handle, std::move(t));
}

ResidentTensor& ResidentStore::Get(int64_t handle) {
  auto it = tensors_.find(handle);
  if (it == tensors_.end())
    throw std::invalid_argument("resident tensor #" + std::to_string(handle) + " is not held by this session");
  return it->second;
}

void ResidentStore::Copy(const std::vector<ResidentCopy>& copies, cudaStream_t stream) {
  std::vector<RowCopy> plans;
  for (const ResidentCopy& c : copies) {
    const ResidentTensor& from = Get(c.from);
    const ResidentTensor& to = Get(c.to);
    if (from.dtype != to.dtype)
      throw std::invalid_argument("row copy: " + from.dtype + " rows into a " + to.dtype + " tensor");
    plans.push_back(RowCopy::Plan(from.dims, to.dims, from.elementSize, c.axis, c.rows, c.fromOffset, c.toOffset));
  }
  for (size_t i = 0; i < copies.size(); ++i)
    plans[i].Enqueue(Get(copies[i].from).buffer.data(), Get(copies[i].to).buffer.data(), stream);
}

void ResidentStore::Release(const std::vector<int64_t>& handles) {
  for (int64_t h : handles) tensors_.erase(h);
}

size_t ResidentStore::bytes() const {
  size_t n = 0;
  for (const auto& [h, t] : tensors_) n += t.bytes;
  return n;
}

}  // namespace setokim
