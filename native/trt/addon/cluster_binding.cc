// setokCluster(features, n, dim, k, threshold, fallback, maxTokens) -> Promise<{centers, labels, scores}>
// setokClusterStream(n, dim, k, threshold, fallback, maxTokens) -> { push(features) -> Promise, close() }
// setokGramBench(n, dim, reps) -> { gramMs, gemmMs, distanceMs, peakGflops, isa, threads } (bench/cluster.ts)
// The JS side (src/setok) validates options; setokCluster copies the features into a plain C++
// vector, a stream push reads its frame in place (kept referenced until the work is done), and the
// work runs in a Napi::AsyncWorker, so the event loop never blocks. Errors reject the promise with
// an Error whose `code` is BAD_INPUT (bad data) or INTERNAL.
#include <chrono>
#include <memory>
#include <mutex>
#include <vector>

#include "addon/module.h"
#include "setok/cluster_cache.h"
#include "setok/dpc_knn.h"
#include "setok/gram_cpu.h"
#include "setok/parallel.h"

namespace {

using setokim::BadInput;
using setokim::ClusterCache;
using setokim::ClusterParams;
using setokim::ClusterResult;

Napi::Value ResultToJs(Napi::Env env, const ClusterResult& r) {
  Napi::Object out = Napi::Object::New(env);
  auto centers = Napi::Int32Array::New(env, r.centers.size());
  std::copy(r.centers.begin(), r.centers.end(), centers.Data());
  auto labels = Napi::Int32Array::New(env, r.labels.size());
  std::copy(r.labels.begin(), r.labels.end(), labels.Data());
  auto scores = Napi::Float32Array::New(env, r.scores.size());
  std::copy(r.scores.begin(), r.scores.end(), scores.Data());
  out.Set("centers", centers);
  out.Set("labels", labels);
  out.Set("scores", scores);
  return out;
}

Napi::Error CodedError(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// Runs `work` on a worker thread; resolves with ResultToJs (plus changedPatches when >= 0).
// `keep`: a JS value the work reads in place (a stream frame's features), referenced until the
// worker is destroyed on the JS thread, so the collector cannot free it while the work runs.
class ClusterWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<ClusterResult(int* changed)>;
  ClusterWorker(Napi::Env env, Work work, Napi::Object keep = Napi::Object())
      : Napi::AsyncWorker(env, "setokCluster"), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)) {
    if (!keep.IsEmpty()) keep_ = Napi::Persistent(keep);
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      result_ = work_(&changed_);
    } catch (const BadInput& e) {
      code_ = "BAD_INPUT";
      SetError(e.what());
    } catch (const std::exception& e) {
      code_ = "INTERNAL";
      SetError(std::string("cluster failed: ") + e.what());
    }
  }
  void OnOK() override {
    Napi::Value v = ResultToJs(Env(), result_);
    if (changed_ >= 0) v.As<Napi::Object>().Set("changedPatches", changed_);
    deferred_.Resolve(v);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(CodedError(Env(), code_, e.Message()).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Napi::ObjectReference keep_;
  ClusterResult result_;
  int changed_ = -1;
  std::string code_ = "INTERNAL";
};

// Finished DpcKnn instances (and their n x n buffers), shared by all libuv workers and handed out
// most recently used first. One per thread, as before, left up to four cold 0.5 MB working sets
// at n = 256 that the rotating libuv threads took turns on; one shared list keeps the last one hot
// in cache for the next call, whichever thread runs it. Concurrent calls each get their own.
class InstancePool {
 public:
  // Holds an instance for `p` for one call (any thread); gives it back to the pool when done.
  class Lease {
   public:
    explicit Lease(const ClusterParams& p) : dpc_(Take(p)) {}
    ~Lease() { Give(std::move(dpc_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    setokim::DpcKnn* operator->() { return dpc_.get(); }

   private:
    std::unique_ptr<setokim::DpcKnn> dpc_;
  };

 private:
  static constexpr size_t kKeep = 4;        // the libuv pool's default size
  static constexpr int kMaxCachedN = 2048;  // above it the buffers (2 x n^2 floats) are not kept

  static bool Same(const ClusterParams& a, const ClusterParams& b) {
    return a.n == b.n && a.dim == b.dim && a.k == b.k && a.threshold == b.threshold && a.fallback == b.fallback &&
           a.maxTokens == b.maxTokens;
  }
  static std::mutex& Mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::unique_ptr<setokim::DpcKnn>>& Free() {
    static auto* free = new std::vector<std::unique_ptr<setokim::DpcKnn>>();  // never destroyed: no exit-time race
    return *free;
  }
  static std::unique_ptr<setokim::DpcKnn> Take(const ClusterParams& p) {
    {
      std::lock_guard<std::mutex> lock(Mutex());
      auto& free = Free();
      for (size_t i = free.size(); i-- > 0;) {
        if (Same(free[i]->params(), p)) {
          auto found = std::move(free[i]);
          free.erase(free.begin() + static_cast<std::ptrdiff_t>(i));
          return found;
        }
      }
    }
    return std::make_unique<setokim::DpcKnn>(p);
  }
  static void Give(std::unique_ptr<setokim::DpcKnn> dpc) {
    if (!dpc || dpc->params().n > kMaxCachedN) return;
    std::unique_ptr<setokim::DpcKnn> evicted;  // freed outside the lock
    std::lock_guard<std::mutex> lock(Mutex());
    auto& free = Free();
    if (free.size() >= kKeep) {
      evicted = std::move(free.front());
      free.erase(free.begin());
    }
    free.push_back(std::move(dpc));
  }
};

ClusterParams ParamsFrom(const Napi::CallbackInfo& info, int first) {
  ClusterParams p;
  p.n = info[first].As<Napi::Number>().Int32Value();
  p.dim = info[first + 1].As<Napi::Number>().Int32Value();
  p.k = info[first + 2].As<Napi::Number>().Int32Value();
  p.threshold = info[first + 3].As<Napi::Number>().DoubleValue();
  p.fallback = info[first + 4].As<Napi::Number>().Int32Value();
  p.maxTokens = info[first + 5].As<Napi::Number>().Int32Value();
  return p;
}

Napi::Float32Array FeaturesArray(const Napi::Value& v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw CodedError(v.Env(), "BAD_INPUT", "features must be a Float32Array");
  }
  return v.As<Napi::Float32Array>();
}

std::vector<float> CopyFeatures(const Napi::Value& v) {
  auto a = FeaturesArray(v);
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}

Napi::Value Cluster(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto features = std::make_shared<std::vector<float>>(CopyFeatures(info[0]));
  const ClusterParams p = ParamsFrom(info, 1);
  try {
    setokim::ValidateClusterParams(p, features->size());
  } catch (const BadInput& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(CodedError(env, "BAD_INPUT", e.what()).Value());
    return d.Promise();
  }
  auto* worker = new ClusterWorker(env, [features, p](int*) {
    InstancePool::Lease dpc(p);
    return dpc->Cluster(features->data());
  });
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // the worker deletes itself when done (N-API convention)
  return promise;
}

// One stream: the cache plus a flag that refuses overlapping pushes (the JS class serialises them).
struct StreamState {
  std::mutex mutex;
  std::unique_ptr<ClusterCache> cache;
  bool busy = false;
  bool closed = false;
  ClusterParams params;
};

Napi::Value ClusterStream(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto state = std::make_shared<StreamState>();
  state->params = ParamsFrom(info, 0);
  try {
    state->cache = std::make_unique<ClusterCache>(state->params);
  } catch (const BadInput& e) {
    throw CodedError(env, "BAD_INPUT", e.what());
  }
  Napi::Object handle = Napi::Object::New(env);
  // The frame is read in place, not copied (a 729 x 1152 frame is 3.4 MB): the caller must not
  // change the array until the promise settles (src/setok/stream.ts documents it).
  handle.Set("push", Napi::Function::New(env, [state](const Napi::CallbackInfo& info) -> Napi::Value {
               Napi::Env env = info.Env();
               Napi::Float32Array array = FeaturesArray(info[0]);
               const float* features = array.Data();
               const size_t count = array.ElementLength();
               auto d = Napi::Promise::Deferred::New(env);
               {
                 std::lock_guard<std::mutex> lock(state->mutex);
                 const char* why = state->closed ? "the stream is closed"
                                   : state->busy ? "a frame is still being clustered; await each push"
                                                 : nullptr;
                 if (!why && count != static_cast<size_t>(state->params.n) * state->params.dim) {
                   why = "features length does not match n x dim";
                 }
                 if (why) {
                   d.Reject(CodedError(env, state->closed ? "CANCELLED" : "BAD_INPUT", why).Value());
                   return d.Promise();
                 }
                 state->busy = true;
               }
               auto* worker = new ClusterWorker(
                   env,
                   [state, features](int* changed) {
                     struct Release {
                       StreamState* s;
                       ~Release() {
                         std::lock_guard<std::mutex> lock(s->mutex);
                         s->busy = false;
                         if (s->closed) s->cache.reset();
                       }
                     } release{state.get()};
                     return state->cache->Push(features, changed);
                   },
                   array);
               Napi::Promise promise = worker->Promise();
               worker->Queue();
               return promise;
             }));
  handle.Set("close", Napi::Function::New(env, [state](const Napi::CallbackInfo& info) -> Napi::Value {
               std::lock_guard<std::mutex> lock(state->mutex);
               // A push in flight keeps using the cache; it frees it when it finishes.
               state->closed = true;
               if (!state->busy) state->cache.reset();
               return info.Env().Undefined();
             }));
  return handle;
}

// Synchronous on purpose: a benchmark helper, never used by the runtime.
Napi::Value GramBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int n = info[0].As<Napi::Number>().Int32Value();
  const int dim = info[1].As<Napi::Number>().Int32Value();
  const int reps = info[2].As<Napi::Number>().Int32Value();
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
  std::vector<float> g, c;
  auto best = [&](auto&& fn) {
    double b = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      fn();
      b = std::min(b, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return b;
  };
  Napi::Object out = Napi::Object::New(env);
  out.Set("gramMs", best([&] { setokim::ComputeGram(x.data(), n, dim, g); }));
  out.Set("gemmMs", best([&] { setokim::ReferenceGemm(x.data(), x.data(), n, n, dim, c); }));
  ClusterParams p;
  p.n = n;
  p.dim = dim;
  p.k = 1;
  setokim::DpcKnn dpc(p);
  std::vector<float> dist;
  out.Set("distanceMs", best([&] {
            setokim::ComputeGram(x.data(), n, dim, g);
            dpc.Distances(g, dist);
          }));
  out.Set("peakGflops", setokim::PeakGflops(0.3));
  out.Set("isa", setokim::GramIsa());
  out.Set("threads", setokim::WorkerCount());
  return out;
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setokCluster", Napi::Function::New(env, Cluster, "setokCluster"));
  exports.Set("setokClusterStream", Napi::Function::New(env, ClusterStream, "setokClusterStream"));
  exports.Set("setokGramBench", Napi::Function::New(env, GramBench, "setokGramBench"));
}

}  // namespace

SETOKIM_ADDON_MODULE(Init);
