#include "tensorrt/logger.h"

#include <cstdio>

namespace setokim {

namespace {
const char* Label(nvinfer1::ILogger::Severity s) {
  using S = nvinfer1::ILogger::Severity;
  switch (s) {
    case S::kINTERNAL_ERROR:
      return "internal error";
    case S::kERROR:
      return "error";
    case S::kWARNING:
      return "warning";
    case S::kINFO:
      return "info";
    default:
      return "verbose";
  }
}
}  // namespace

Logger::Logger(Severity threshold, bool echo) : threshold_(threshold), echo_(echo) {}

void Logger::log(Severity severity, const char* msg) noexcept {
  // Lower enum values are more severe.
  if (static_cast<int>(severity) > static_cast<int>(threshold_)) return;
  try {
    std::string line = std::string("TensorRT ") + Label(severity) + ": " + (msg ? msg : "");
    if (echo_) std::fprintf(stderr, "%s\n", line.c_str());
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(severity) <= static_cast<int>(Severity::kERROR)) lastError_ = line;
    if (static_cast<int>(severity) <= static_cast<int>(Severity::kWARNING)) {
      kept_.push_back(std::move(line));
      if (kept_.size() > kKeep) kept_.pop_front();
    }
  } catch (...) {
    // log() is noexcept: a message lost to an allocation failure is better than a crash.
  }
}

std::vector<std::string> Logger::TakeMessages() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out(kept_.begin(), kept_.end());
  kept_.clear();
  return out;
}

std::string Logger::LastError() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lastError_;
}

}  // namespace setokim
