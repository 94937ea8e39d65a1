// TensorRT's logger: passes messages at or above a severity threshold to stderr and keeps the
// recent warnings and errors, so a failed load, build or run can say what TensorRT reported (the
// field's advice: check the log after the canary inference).
// Thread safety: TensorRT may call log() from any thread; every method is safe from any thread.
// A Logger must outlive every runtime and builder created with it (declare it first).
#pragma once
#include <NvInferRuntime.h>

#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace setokim {

class Logger : public nvinfer1::ILogger {
 public:
  explicit Logger(Severity threshold = Severity::kWARNING, bool echo = false);
  void log(Severity severity, const char* msg) noexcept override;

  // Warnings and errors since the last call, oldest first (at most kKeep).
  std::vector<std::string> TakeMessages();
  // The most recent error, or "" when there was none.
  std::string LastError() const;

  static constexpr size_t kKeep = 64;

 private:
  const Severity threshold_;
  const bool echo_;
  mutable std::mutex mu_;
  std::deque<std::string> kept_;
  std::string lastError_;
};

}  // namespace setokim
