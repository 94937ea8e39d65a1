// One dedicated worker thread for short native jobs whose promise should settle fast.
// libuv's pool threads sleep between jobs, and waking one costs ~20 us on small VMs and on
// power-managed cores: a tenth of a 256-patch clustering. This thread spins for a short while
// after each job (back-to-back calls, such as a camera stream's frames, find it awake), then
// sleeps. Jobs run one at a time, in submission order (each uses every core through ParallelFor).
// Results come back to the JS thread through one thread-safe function per Node environment (the
// main thread and each worker_threads Worker), referenced only while a job of its is pending, so
// the process exits as it would with libuv work: when nothing is left to settle.
// Thread safety: Submit on a JS thread; the rest is internal.
#pragma once
#include <napi.h>

#include <memory>

namespace setokim::addon {

class SpinWorker {
 public:
  class Job {
   public:
    virtual ~Job() = default;
    virtual void Run() = 0;                     // on the worker thread; must not throw
    virtual void Settle(Napi::Env env) = 0;     // on the JS thread that submitted it
  };

  // JS thread. Queues `job`; its Settle runs later on this thread, unless the environment is torn
  // down first (then the job is dropped).
  static void Submit(Napi::Env env, std::unique_ptr<Job> job);
};

}  // namespace setokim::addon
