// Reports TensorRT build progress (IProgressMonitor, TensorRT >= 10.0) to a callback and lets the
// caller cancel a build. Phases nest; each report carries the phase name, step and step count.
// Thread safety: TensorRT calls the IProgressMonitor methods from its build thread; Cancel() may be
// called from any thread. The callback runs on the build thread and must not throw.
#pragma once
#include <NvInfer.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>

namespace setokim {

using ProgressFn = std::function<void(const std::string& phase, int step, int steps)>;

class ProgressMonitor : public nvinfer1::IProgressMonitor {
 public:
  explicit ProgressMonitor(ProgressFn fn);

  void phaseStart(const char* phaseName, const char* parentPhase, int32_t nbSteps) noexcept override;
  bool stepComplete(const char* phaseName, int32_t step) noexcept override;
  void phaseFinish(const char* phaseName) noexcept override;

  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  void Report(const std::string& phase, int step) noexcept;
  ProgressFn fn_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::map<std::string, int> steps_;  // per open phase
};

}  // namespace setokim
