#include "tensorrt/progress_monitor.h"

namespace setokim {

ProgressMonitor::ProgressMonitor(ProgressFn fn, CancelFlag cancel)
    : fn_(std::move(fn)), cancelled_(cancel ? std::move(cancel) : std::make_shared<std::atomic<bool>>(false)) {}

void ProgressMonitor::phaseStart(const char* phaseName, const char* /*parentPhase*/, int32_t nbSteps) noexcept {
  try {
    {
      std::lock_guard<std::mutex> lock(mu_);
      steps_[phaseName ? phaseName : ""] = nbSteps;
    }
    Report(phaseName ? phaseName : "", 0);
  } catch (...) {
  }
}

bool ProgressMonitor::stepComplete(const char* phaseName, int32_t step) noexcept {
  Report(phaseName ? phaseName : "", step + 1);
  return !cancelled();  // false asks TensorRT to stop the build
}

void ProgressMonitor::phaseFinish(const char* phaseName) noexcept {
  try {
    std::lock_guard<std::mutex> lock(mu_);
    steps_.erase(phaseName ? phaseName : "");
  } catch (...) {
  }
}

void ProgressMonitor::Report(const std::string& phase, int step) noexcept {
  if (!fn_) return;
  try {
    int steps = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = steps_.find(phase);
      if (it != steps_.end()) steps = it->second;
    }
    fn_(phase, step, steps);
  } catch (...) {
    // A progress report never breaks a build.
  }
}

}  // namespace setokim
