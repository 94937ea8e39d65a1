// DPC-KNN on a CUDA GPU, on device memory: Gram matrix (tiled kernel), distances, k-nearest density,
// delta, centre selection and labels all run as kernels, so features that are already on the GPU
// (the encoder's output on a Jetson) never leave it. It follows the reference's float32 order with
// round-to-nearest intrinsics (no FMA contraction), so it gives the CPU's centres and labels.
// Built only with the CUDA tier (SETOKIM_WITH_CUDA). The header needs no CUDA headers.
// Thread safety: one thread at a time per instance; it owns its device buffers and stream.
#pragma once
#include <memory>
#include <string>

#include "setok/cluster_types.h"

namespace setokim {

// True when a CUDA device can be used; otherwise `why` says why not.
bool CudaClusterAvailable(std::string* why);

struct CudaTimings {
  float gram_ms = 0, dist_ms = 0, density_ms = 0, rest_ms = 0;
};

class DpcKnnCuda {
 public:
  // Allocates device buffers for params.n x params.dim on `device`. Throws BadInput on unusable
  // params (n above 4096 included), std::runtime_error on CUDA errors.
  explicit DpcKnnCuda(const ClusterParams& params, int device = 0);
  ~DpcKnnCuda();
  DpcKnnCuda(const DpcKnnCuda&) = delete;
  DpcKnnCuda& operator=(const DpcKnnCuda&) = delete;

  // Copies host features into the instance's device buffer (checks NaN/Inf on the host first).
  void Upload(const float* host_features);
  // Upload + ClusterDevice.
  ClusterResult Cluster(const float* host_features);
  // Clusters features already on the device (n x dim floats, row-major; nullptr = the uploaded
  // buffer) and copies the small results (centres, labels, scores, rho) back.
  ClusterResult ClusterDevice(const float* device_features = nullptr);

  CudaTimings LastTimings() const;
  // Benchmark helper: times every Gram kernel tile shape on the uploaded features (median of reps)
  // and says whether each one's matrix equals the default's bit for bit. One line per shape.
  std::string GramVariantReport(int reps);
  std::string DeviceName() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace setokim
