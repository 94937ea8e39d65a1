// The CUDA-only parts of the TensorRT session: RowCopy's plan (plain arithmetic, checked on every
// machine) and, where a GPU is present, resident tensors (zero-filled allocation, row copies
// between tensors of different capacities at offsets, a KV cache filled row block by row block)
// and mapped pinned memory read and written by the device in place. Without the CUDA tier or
// without a GPU the device part prints "skipped: ..." and the program exits 77, which ctest
// reports as skipped (SKIP_RETURN_CODE in CMakeLists.txt).
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"
#ifdef SETOKIM_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/cuda_stream.h"
#include "cuda/device_buffer.h"
#include "cuda/mapped_host_buffer.h"
#include "cuda/resident_store.h"
#include "cuda/row_copy.h"
#endif

using namespace setokim::test;

#ifdef SETOKIM_WITH_CUDA
using namespace setokim;

namespace {

constexpr int kSkip = 77;

// [layers=1, heads, rows, hd] float tensors, as a KV cache layer.
std::vector<int64_t> Dims(int64_t heads, int64_t rows, int64_t hd) { return {1, heads, rows, hd}; }

void PlanChecks() {
  // KV cache [1, 4 heads, 10 rows, 16] <- new rows [1, 4, 3, 16] at row 5.
  const RowCopy c = RowCopy::Plan(Dims(4, 3, 16), Dims(4, 10, 16), 4, 2, 3, 0, 5);
  EXPECT(c.height() == 4, "one block per head, got %zu", c.height());
  EXPECT(c.widthBytes() == 3 * 16 * 4, "3 rows of 16 floats, got %zu", c.widthBytes());
  EXPECT(c.srcPitchBytes() == 3 * 16 * 4 && c.dstPitchBytes() == 10 * 16 * 4, "pitches %zu %zu", c.srcPitchBytes(),
         c.dstPitchBytes());
  EXPECT(c.srcStartBytes() == 0 && c.dstStartBytes() == 5 * 16 * 4, "starts %zu %zu", c.srcStartBytes(),
         c.dstStartBytes());
  const RowCopy outer = RowCopy::Plan({6, 2}, {8, 2}, 2, 0, 6, 0, 2);  // axis 0: one contiguous block
  EXPECT(outer.height() == 1 && outer.widthBytes() == 6 * 2 * 2 && outer.dstStartBytes() == 2 * 2 * 2, "axis 0");
  int refused = 0;
  for (auto bad :
       {std::vector<int64_t>{1, 4, 3, 8}, std::vector<int64_t>{1, 5, 3, 16}, std::vector<int64_t>{4, 3, 16}}) {
    try {
      RowCopy::Plan(bad, Dims(4, 10, 16), 4, 2, 3, 0, 0);
    } catch (const std::invalid_argument&) {
      ++refused;
    }
  }
  try {
    RowCopy::Plan(Dims(4, 3, 16), Dims(4, 10, 16), 4, 2, 3, 0, 8);  // rows 8..10 overrun 10
  } catch (const std::invalid_argument&) {
    ++refused;
  }
  EXPECT(refused == 4, "shapes off the axis, ranks and overruns are refused (%d of 4)", refused);
}

std::vector<float> Download(const ResidentTensor& t) {
  std::vector<float> out(t.bytes / sizeof(float));
  if (cudaMemcpy(out.data(), t.buffer.data(), t.bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
    throw std::runtime_error("download");
  return out;
}

void Upload(ResidentTensor& t, const std::vector<float>& v) {
  if (cudaMemcpy(t.buffer.data(), v.data(), t.bytes, cudaMemcpyHostToDevice) != cudaSuccess)
    throw std::runtime_error("upload");
}

// The host reference: rows [from, from+rows) of src into dst at `at`, along axis 2 of [1, H, R, D].
void CopyRowsRef(const std::vector<float>& src, int64_t srcRows, std::vector<float>& dst, int64_t dstRows,
                 int64_t heads, int64_t hd, int64_t rows, int64_t from, int64_t at) {
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t d = 0; d < hd; ++d) dst[(h * dstRows + at + r) * hd + d] = src[(h * srcRows + from + r) * hd + d];
}

void ResidentChecks() {
  CudaStream stream;
  ResidentStore store;
  const int64_t H = 3, D = 8;
  store.Allocate(1, "float32", Dims(H, 12, D), 4, stream.get());  // a query's cache
  store.Allocate(2, "float32", Dims(H, 4, D), 4, stream.get());   // a step's new rows
  store.Allocate(3, "float32", Dims(H, 20, D), 4, stream.get());  // a grown cache
  stream.Synchronize();
  EXPECT(store.count() == 3 && store.bytes() == (12 + 4 + 20) * H * D * 4, "bytes %zu", store.bytes());
  std::vector<float> cache = Download(store.Get(1));
  bool zeros = true;
  for (float v : cache) zeros = zeros && v == 0.0f;
  EXPECT(zeros, "allocated as zeros");
  // Fill the cache the way decoding does: blocks of new rows at growing offsets.
  std::vector<float> ref(cache.size(), 0.0f);
  int64_t at = 0;
  for (int64_t step : {4, 1, 1, 2}) {
    std::vector<float> rows(static_cast<size_t>(H * 4 * D));
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(at * 1000 + static_cast<int64_t>(i));
    Upload(store.Get(2), rows);
    store.Copy({ResidentCopy{2, 1, 2, step, 0, at}}, stream.get());
    CopyRowsRef(rows, 4, ref, 12, H, D, step, 0, at);
    at += step;
  }
  stream.Synchronize();
  EXPECT(Download(store.Get(1)) == ref, "rows written at their offsets, the rest untouched");
  // Grow: the first `at` rows into a larger cache (a conversation's next turn), at row 0.
  store.Copy({ResidentCopy{1, 3, 2, at, 0, 0}}, stream.get());
  stream.Synchronize();
  std::vector<float> grown(static_cast<size_t>(H * 20 * D), 0.0f);
  CopyRowsRef(ref, 12, grown, 20, H, D, at, 0, 0);
  EXPECT(Download(store.Get(3)) == grown, "a grown cache holds the same rows");
  int refused = 0;
  try {
    store.Copy({ResidentCopy{1, 3, 2, 2, 0, 0}, ResidentCopy{1, 99, 2, 1, 0, 0}}, stream.get());
  } catch (const std::invalid_argument&) {
    ++refused;
  }
  try {
    store.Allocate(1, "float32", Dims(1, 1, 1), 4, stream.get());
  } catch (const std::invalid_argument&) {
    ++refused;
  }
  EXPECT(refused == 2, "unknown and duplicate handles are refused");
  stream.Synchronize();
  EXPECT(Download(store.Get(3)) == grown, "a refused batch issues none of its copies");
  store.Release({1, 2, 3, 42});
  EXPECT(store.count() == 0 && store.bytes() == 0, "released, unknown handles ignored");
}

void MappedChecks(int device) {
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device);
  std::printf("device %d: %s, integrated %d, canMapHostMemory %d: mapped IO %s\n", device, prop.name, prop.integrated,
              prop.canMapHostMemory,
              MappedHostBuffer::PreferredOn(device) ? "preferred" : "not preferred (discrete GPU)");
  EXPECT(MappedHostBuffer::PreferredOn(device) == (prop.integrated && prop.canMapHostMemory),
         "PreferredOn follows cudaDeviceProp");
  if (!prop.canMapHostMemory) return;
  // The device reads and writes the pinned host pages through their device address.
  MappedHostBuffer in, out;
  in.Reserve(64 * sizeof(float));
  out.Reserve(64 * sizeof(float));
  EXPECT(in.host() != nullptr && in.device() != nullptr && in.capacity() >= 64 * sizeof(float), "mapped");
  auto* h = static_cast<float*>(in.host());
  for (int i = 0; i < 64; ++i) h[i] = static_cast<float>(i) * 0.5f;
  EXPECT(cudaMemcpy(out.device(), in.device(), 64 * sizeof(float), cudaMemcpyDeviceToDevice) == cudaSuccess,
         "device copy");
  EXPECT(std::memcmp(out.host(), in.host(), 64 * sizeof(float)) == 0, "what the device wrote is on the host at once");
  const void* before = in.host();
  in.Reserve(16);
  EXPECT(in.host() == before, "grow-only: a smaller request keeps the buffer");
  MappedHostBuffer moved(std::move(in));
  EXPECT(moved.host() == before && in.host() == nullptr, "moves own the pages");
}

}  // namespace
#endif

int main() {
#ifndef SETOKIM_WITH_CUDA
  std::printf("skipped: built without CUDA (SETOKIM_CUDA=OFF or no nvcc)\n");
  return 77;
#else
  PlanChecks();
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("%d plan checks passed; device checks skipped: no GPU (%s)\n", Passed(),
                err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device found");
    return Failed() ? 1 : kSkip;
  }
  try {
    cudaSetDevice(0);
    ResidentChecks();
    MappedChecks(0);
  } catch (const std::exception& e) {
    EXPECT(false, "threw: %s", e.what());
  }
  return Finish();
#endif
}
