#include "addon/spin_worker.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

namespace setokim::addon {
namespace {

// How long the worker stays awake after a job. Long enough to cover a JS round trip (settle the
// promise, run the caller's continuation, submit the next frame: ~50 us), short enough that an
// idle process costs nothing measurable.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// The per-environment way back to the JS thread. `tsfn` is cleared (under `mutex`) when the
// environment is torn down, so the worker never calls into a finalised function.
struct Channel {
  std::mutex mutex;
  napi_threadsafe_function tsfn = nullptr;
  int pending = 0;  // JS thread only
};

struct Queued {
  std::unique_ptr<SpinWorker::Job> job;
  std::shared_ptr<Channel> channel;
};

class Thread {
 public:
  static Thread& Get() {
    static Thread* thread = new Thread();  // never destroyed: it may still be asleep at exit
    return *thread;
  }

  void Push(Queued q) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(q));
      pushed_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_one();
  }

 private:
  Thread() { std::thread([this] { Loop(); }).detach(); }

  void Loop() {
    for (;;) {
      Queued q;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (queue_.empty()) {
          const auto until = std::chrono::steady_clock::now() + kSpin;
          const unsigned seen = pushed_.load(std::memory_order_acquire);
          lock.unlock();
          while (pushed_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) CpuRelax();
          lock.lock();
          cv_.wait(lock, [&] { return !queue_.empty(); });
        }
        q = std::move(queue_.front());
        queue_.pop_front();
      }
      q.job->Run();
      std::lock_guard<std::mutex> lock(q.channel->mutex);
      if (q.channel->tsfn && napi_call_threadsafe_function(q.channel->tsfn, q.job.get(), napi_tsfn_blocking) == napi_ok) {
        q.job.release();  // CallJs owns it now
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  std::atomic<unsigned> pushed_{0};  // jobs ever queued: the spin watches it without the lock
};

void CallJs(napi_env env, napi_value, void* context, void* data) {
  std::unique_ptr<SpinWorker::Job> job(static_cast<SpinWorker::Job*>(data));
  if (env == nullptr) return;  // torn down: drop it
  auto* channel = static_cast<Channel*>(context);
  job->Settle(Napi::Env(env));
  if (--channel->pending == 0) napi_unref_threadsafe_function(env, channel->tsfn);
}

// The calling JS thread's channel, made on first use (one environment per JS thread).
std::shared_ptr<Channel> ChannelFor(Napi::Env env) {
  thread_local std::shared_ptr<Channel> channel;
  if (channel) return channel;
  auto made = std::make_shared<Channel>();
  napi_value name;
  NAPI_THROW_IF_FAILED(env, napi_create_string_utf8(env, "setokimSpinWorker", NAPI_AUTO_LENGTH, &name), nullptr);
  NAPI_THROW_IF_FAILED(env,
                       napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, nullptr, nullptr,
                                                       made.get(), CallJs, &made->tsfn),
                       nullptr);
  napi_unref_threadsafe_function(env, made->tsfn);
  // Teardown: no more calls into the function; jobs still queued or running are dropped.
  auto* hook_data = new std::shared_ptr<Channel>(made);
  napi_add_env_cleanup_hook(
      env,
      [](void* arg) {
        std::unique_ptr<std::shared_ptr<Channel>> held(static_cast<std::shared_ptr<Channel>*>(arg));
        Channel& c = **held;
        std::lock_guard<std::mutex> lock(c.mutex);
        napi_release_threadsafe_function(c.tsfn, napi_tsfn_abort);
        c.tsfn = nullptr;
        channel.reset();
      },
      hook_data);
  channel = made;
  return channel;
}

}  // namespace

void SpinWorker::Submit(Napi::Env env, std::unique_ptr<Job> job) {
  std::shared_ptr<Channel> channel = ChannelFor(env);
  if (!channel) return;  // the exception is pending in JS
  if (channel->pending++ == 0) napi_ref_threadsafe_function(env, channel->tsfn);
  Thread::Get().Push(Queued{std::move(job), std::move(channel)});
}

}  // namespace setokim::addon
