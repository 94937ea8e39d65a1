#include "setok/dpc_knn_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "setok/dpc_knn_kernels.h"

namespace setokim {
namespace {

void Check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what + ": " +
                             cudaGetErrorString(err));
  }
}
#define SETOKIM_CUDA_CHECK(expr) Check((expr), #expr, __FILE__, __LINE__)

struct DeviceFree {
  void operator()(void* p) const { cudaFree(p); }
};
template <typename T>
using DeviceBuffer = std::unique_ptr<T, DeviceFree>;

template <typename T>
DeviceBuffer<T> Alloc(size_t count) {
  void* p = nullptr;
  SETOKIM_CUDA_CHECK(cudaMalloc(&p, count * sizeof(T) + 16));
  return DeviceBuffer<T>(static_cast<T*>(p));
}

}  // namespace

bool CudaClusterAvailable(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why) *why = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device found";
    cudaGetLastError();
    return false;
  }
  return true;
}

struct DpcKnnCuda::Impl {
  ClusterParams p;
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t ev[5] = {};
  DeviceBuffer<float> x, gram, dist, rho, delta, row_max, scores;
  DeviceBuffer<int> centers, center_of, count, labels;
  CudaTimings timings;

  ~Impl() {
    for (auto e : ev)
      if (e) cudaEventDestroy(e);
    if (stream) cudaStreamDestroy(stream);
  }
};

DpcKnnCuda::DpcKnnCuda(const ClusterParams& params, int device) : impl_(std::make_unique<Impl>()) {
  ValidateClusterParams(params, static_cast<size_t>(params.n) * params.dim);
  if (params.n > cuda::kMaxPatches) {
    throw BadInput("cluster: the CUDA clustering supports up to " + std::to_string(cuda::kMaxPatches) +
                   " patches, got " + std::to_string(params.n) + "; use the CPU clustering");
  }
  Impl& m = *impl_;
  m.p = params;
  m.device = device;
  SETOKIM_CUDA_CHECK(cudaSetDevice(device));
  SETOKIM_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  for (auto& e : m.ev) SETOKIM_CUDA_CHECK(cudaEventCreate(&e));
  const size_t n = params.n;
  m.x = Alloc<float>(n * params.dim);
  m.gram = Alloc<float>(n * n);
  m.dist = Alloc<float>(n * n);
  m.rho = Alloc<float>(n);
  m.delta = Alloc<float>(n);
  m.row_max = Alloc<float>(n);
  m.scores = Alloc<float>(n);
  m.centers = Alloc<int>(n);
  m.center_of = Alloc<int>(n);
  m.count = Alloc<int>(1);
  m.labels = Alloc<int>(n);
}

DpcKnnCuda::~DpcKnnCuda() = default;

void DpcKnnCuda::Upload(const float* host_features) {
  Impl& m = *impl_;
  CheckFinite(host_features, m.p.n, m.p.dim);
  SETOKIM_CUDA_CHECK(cudaSetDevice(m.device));
  SETOKIM_CUDA_CHECK(
      cudaMemcpyAsync(m.x.get(), host_features, sizeof(float) * m.p.n * m.p.dim, cudaMemcpyHostToDevice, m.stream));
}

ClusterResult DpcKnnCuda::Cluster(const float* host_features) {
  Upload(host_features);
  return ClusterDevice();
}

ClusterResult DpcKnnCuda::ClusterDevice(const float* device_features) {
  Impl& m = *impl_;
  const ClusterParams& p = m.p;
  const float* x = device_features ? device_features : m.x.get();
  SETOKIM_CUDA_CHECK(cudaSetDevice(m.device));
  SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[0], m.stream));
  cuda::LaunchGram(x, p.n, p.dim, m.gram.get(), m.stream);
  SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[1], m.stream));
  cuda::LaunchDistances(m.gram.get(), p.n, p.dim, m.dist.get(), m.stream);
  SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[2], m.stream));
  cuda::LaunchDensity(m.dist.get(), p.n, p.k, m.rho.get(), m.stream);
  SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[3], m.stream));
  cuda::LaunchSelect(m.dist.get(), m.rho.get(), p.n, p.threshold, p.fallback, p.maxTokens, m.delta.get(),
                     m.row_max.get(), m.scores.get(), m.centers.get(), m.center_of.get(), m.count.get(), m.labels.get(),
                     m.stream);
  SETOKIM_CUDA_CHECK(cudaGetLastError());
  SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[4], m.stream));
  ClusterResult r;
  int count = 0;
  r.labels.resize(p.n);
  r.scores.resize(p.n);
  r.rho.resize(p.n);
  SETOKIM_CUDA_CHECK(cudaMemcpyAsync(&count, m.count.get(), sizeof(int), cudaMemcpyDeviceToHost, m.stream));
  SETOKIM_CUDA_CHECK(
      cudaMemcpyAsync(r.labels.data(), m.labels.get(), sizeof(int) * p.n, cudaMemcpyDeviceToHost, m.stream));
  SETOKIM_CUDA_CHECK(
      cudaMemcpyAsync(r.scores.data(), m.scores.get(), sizeof(float) * p.n, cudaMemcpyDeviceToHost, m.stream));
  SETOKIM_CUDA_CHECK(cudaMemcpyAsync(r.rho.data(), m.rho.get(), sizeof(float) * p.n, cudaMemcpyDeviceToHost, m.stream));
  // centres: copy all n slots (no sync on the count first), keep the first `count`.
  std::vector<int> centers(p.n);
  SETOKIM_CUDA_CHECK(
      cudaMemcpyAsync(centers.data(), m.centers.get(), sizeof(int) * p.n, cudaMemcpyDeviceToHost, m.stream));
  SETOKIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  r.centers.assign(centers.begin(), centers.begin() + count);
  float t[4];
  for (int i = 0; i < 4; ++i) SETOKIM_CUDA_CHECK(cudaEventElapsedTime(&t[i], m.ev[i], m.ev[i + 1]));
  m.timings = CudaTimings{t[0], t[1], t[2], t[3]};
  return r;
}

CudaTimings DpcKnnCuda::LastTimings() const { return impl_->timings; }

std::string DpcKnnCuda::GramVariantReport(int reps) {
  Impl& m = *impl_;
  const size_t nn = static_cast<size_t>(m.p.n) * m.p.n;
  SETOKIM_CUDA_CHECK(cudaSetDevice(m.device));
  std::vector<float> want(nn), got(nn);
  cuda::LaunchGram(m.x.get(), m.p.n, m.p.dim, m.gram.get(), m.stream);
  SETOKIM_CUDA_CHECK(cudaMemcpyAsync(want.data(), m.gram.get(), nn * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
  SETOKIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
  std::string out;
  for (int v = 0; v < cuda::GramVariantCount(); ++v) {
    SETOKIM_CUDA_CHECK(cudaMemsetAsync(m.gram.get(), 0, nn * sizeof(float), m.stream));
    const char* name = cuda::LaunchGramVariant(v, m.x.get(), m.p.n, m.p.dim, m.gram.get(), m.stream);
    SETOKIM_CUDA_CHECK(cudaMemcpyAsync(got.data(), m.gram.get(), nn * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
    SETOKIM_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    const bool same = std::memcmp(got.data(), want.data(), nn * sizeof(float)) == 0;
    std::vector<float> ms;
    for (int r = 0; r < reps; ++r) {
      SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[0], m.stream));
      cuda::LaunchGramVariant(v, m.x.get(), m.p.n, m.p.dim, m.gram.get(), m.stream);
      SETOKIM_CUDA_CHECK(cudaEventRecord(m.ev[1], m.stream));
      SETOKIM_CUDA_CHECK(cudaEventSynchronize(m.ev[1]));
      float t = 0;
      SETOKIM_CUDA_CHECK(cudaEventElapsedTime(&t, m.ev[0], m.ev[1]));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    char line[160];
    std::snprintf(line, sizeof line, "gram variant %d (%s%s): %.4f ms, %s\n", v, name, v == 0 ? ", default" : "",
                  ms[ms.size() / 2], same ? "identical to the default" : "DIFFERENT BITS");
    out += line;
    if (!same) throw std::runtime_error(std::string("Gram variant ") + name + " differs from the default");
  }
  return out;
}

std::string DpcKnnCuda::DeviceName() const {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, impl_->device) != cudaSuccess) return "unknown";
  return prop.name;
}

}  // namespace setokim
