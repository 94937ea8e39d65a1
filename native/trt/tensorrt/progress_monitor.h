// Reports TensorRT build progress (IProgressMonitor, TensorRT >= 10.0) to a callback and lets the
// caller cancel a build. Phases nest; each report carries the phase name, step and step count.
// Cancellation is a shared flag (CancelFlag): whoever holds it (the Node-API binding's cancel
// function, on the JS thread) sets it, and the next stepComplete returns false, which asks TensorRT
// to stop the build.
// Thread safety: TensorRT calls the IProgressMonitor methods from its build thread; Cancel() and
// cancelled() may be called from any thread. The callback runs on the build thread and must not throw.
#pragma once
#include <NvInfer.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace setokim {

using ProgressFn = std::function<void(const std::string& phase, int step, int steps)>;
// Set (from any thread) to cancel a build; shared by the monitor and whoever may cancel it.
using CancelFlag = std::shared_ptr<std::atomic<bool>>;

class ProgressMonitor : public nvinfer1::IProgressMonitor {
 public:
  // `cancel`: a flag shared with the canceller; null makes a private one (Cancel() only).
  explicit ProgressMonitor(ProgressFn fn, CancelFlag cancel = nullptr);

  void phaseStart(const char* phaseName, const char* parentPhase, int32_t nbSteps) noexcept override;
  bool stepComplete(const char* phaseName, int32_t step) noexcept override;
  void phaseFinish(const char* phaseName) noexcept override;

  void Cancel() { cancelled_->store(true); }
  bool cancelled() const { return cancelled_->load(); }

 private:
  void Report(const std::string& phase, int step) noexcept;
  ProgressFn fn_;
  CancelFlag cancelled_;
  std::mutex mu_;
  std::map<std::string, int> steps_;  // per open phase
};

}  // namespace setokim
