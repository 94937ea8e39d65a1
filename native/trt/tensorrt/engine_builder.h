// Builds a TensorRT engine from an ONNX graph on this machine: nvonnxparser, a strongly typed
// network (precision comes from the graph: FP16 tensors, Q/DQ nodes; one code path for TensorRT
// 10.3 and 11), one optimisation profile per entry of `profiles`, a workspace limit, an optional
// timing cache (loaded when present, saved after), and progress through IProgressMonitor.
// Thread safety: Build() may run on any thread (a worker; builds take minutes); one Build per
// EngineBuilder at a time. Cancel(), or setting the CancelFlag given to the constructor, from any
// thread: the build stops at TensorRT's next progress step (or before it starts) and Build() throws.
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

#include "tensorrt/progress_monitor.h"

namespace setokim {

struct ShapeRange {
  std::vector<int64_t> min, opt, max;
};

struct BuildOptions {
  std::string onnxPath;
  std::string planPath;
  size_t workspaceBytes = size_t(1) << 30;
  std::string timingCachePath;  // empty: no cache
  std::vector<std::map<std::string, ShapeRange>> profiles;
  int device = 0;
};

struct BuildResult {
  size_t bytes = 0;
  double seconds = 0;
  std::vector<std::string> warnings;
};

class EngineBuilder {
 public:
  EngineBuilder(BuildOptions options, ProgressFn progress = nullptr, CancelFlag cancel = nullptr);
  // Writes the plan to options.planPath (atomically: a temporary file, then rename). Throws
  // std::runtime_error with the parser's or builder's errors.
  BuildResult Build();
  void Cancel() { monitor_.Cancel(); }

 private:
  BuildOptions options_;
  ProgressMonitor monitor_;
};

}  // namespace setokim
