#include "setok/parallel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__linux__)
#include <sched.h>
#endif

namespace setokim {
namespace {

// Runs items of one ParallelFor until none are left; the first exception stops the others.
struct Job {
  const std::function<void(int)>* fn = nullptr;
  int count = 0;
  std::atomic<int> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;

  void Work() {
    for (int i = next.fetch_add(1); i < count; i = next.fetch_add(1)) {
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(count);
      }
    }
  }
};

// WorkerCount() - 1 helper threads started once and kept: starting and joining a thread per call
// cost ~40 us, as much as a whole phase of a 256-patch clustering. After a job a helper spins
// briefly for the next one (the phases of one clustering follow each other within microseconds),
// then sleeps. One job at a time: a second caller meanwhile uses threads of its own (the old way).
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool();  // never destroyed: helpers may still be asleep at exit
    return *pool;
  }

  // Any thread. Returns false (nothing run) when another job holds the pool.
  bool Run(Job& job) {
    thread_local bool running = false;  // a nested ParallelFor on this thread must not re-lock
    if (running) return false;
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    running = true;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      open_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    job.Work();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_ = false;  // helpers that have not joined yet never will
      job_ = nullptr;
    }
    while (joined_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    running = false;
    return true;
  }

 private:
  Pool() {
    for (int t = 1; t < WorkerCount(); ++t) std::thread([this] { Helper(); }).detach();
  }

  void Helper() {
    unsigned seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      }
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        if (open_) {
          job = job_;
          joined_.fetch_add(1, std::memory_order_relaxed);
        }
      }
      if (job) {
        job->Work();
        joined_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::mutex run_mutex_;  // held by the caller whose job the helpers serve
  std::mutex mutex_;      // guards job_, open_ and joining
  std::condition_variable cv_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> joined_{0};
  Job* job_ = nullptr;
  bool open_ = false;
};

}  // namespace

int WorkerCount() {
  // The CPUs this process may run on (taskset, a cgroup cpuset, a container's --cpuset-cpus), read
  // once: hardware_concurrency() counts every core of the machine, and a helper thread spinning on
  // the caller's only core would slow every parallel phase down instead.
  static const int count = [] {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
  }();
  return count;
}

void ParallelFor(int count, const std::function<void(int)>& fn, bool parallel) {
  if (count <= 0) return;
  Job job;
  job.fn = &fn;
  job.count = count;
  const int threads = parallel ? std::min(WorkerCount(), count) : 1;
  if (threads == 1) {
    job.Work();
  } else if (!Pool::Get().Run(job)) {
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (int t = 1; t < threads; ++t) pool.emplace_back([&job] { job.Work(); });
    job.Work();
    for (auto& th : pool) th.join();
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace setokim
