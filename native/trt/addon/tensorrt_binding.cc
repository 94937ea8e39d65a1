// Node-API binding of the TensorRT backend: trtLoadEngine(plan, device) -> Promise<engine with
// run(feeds, resident?, writes?), allocate, copyRows, read, release, dispose()>,
// trtBuildEngine(options, onProgress?, registerCancel?) -> Promise<result>; registerCancel, when
// given, is called at once with a cancel() that stops the build. Resident tensors are device
// buffers of the engine's session under handles JavaScript chooses (src/engine/tensorrt.ts).
// JavaScript validates every option (src/engine/tensorrt.ts, engine-builder.ts); this layer copies
// JS values into plain structs on the JS thread, runs the heavy work in Napi::AsyncWorker, and
// turns C++ exceptions into promise rejections back on the JS thread.
// The whole file compiles only into builds with TensorRT.
#ifdef SETOKIM_WITH_TENSORRT

#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "addon/module.h"
#include "tensorrt/engine.h"
#include "tensorrt/engine_builder.h"
#include "tensorrt/engine_session.h"
#include "tensorrt/host_tensor.h"

namespace {

using setokim::BuildOptions;
using setokim::BuildResult;
using setokim::CancelFlag;
using setokim::Engine;
using setokim::EngineBuilder;
using setokim::EngineSession;
using setokim::HostTensor;
using setokim::ResidentCopy;
using setokim::ResidentSpec;
using setokim::RowWrite;
using setokim::ShapeRange;

using TensorMap = std::map<std::string, HostTensor>;

// ---- JS <-> plain structs (JS thread only) ----

std::vector<int64_t> ReadInts(const Napi::Value& v) {
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> out(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) out[i] = a.Get(i).As<Napi::Number>().Int64Value();
  return out;
}

TensorMap ReadFeeds(const Napi::Object& feeds) {
  TensorMap out;
  Napi::Array names = feeds.GetPropertyNames();
  for (uint32_t i = 0; i < names.Length(); ++i) {
    const std::string name = names.Get(i).As<Napi::String>();
    Napi::Object t = feeds.Get(name).As<Napi::Object>();
    HostTensor h;
    h.dtype = t.Get("dtype").As<Napi::String>();
    h.dims = ReadInts(t.Get("dims"));
    Napi::TypedArray data = t.Get("data").As<Napi::TypedArray>();
    const auto* begin = static_cast<const uint8_t*>(data.ArrayBuffer().Data()) + data.ByteOffset();
    h.bytes.assign(begin, begin + data.ByteLength());  // a copy: the caller keeps its array
    out.emplace(name, std::move(h));
  }
  return out;
}

int64_t ReadInt(const Napi::Object& o, const char* key) { return o.Get(key).As<Napi::Number>().Int64Value(); }

std::map<std::string, int64_t> ReadHandles(const Napi::Value& v) {
  std::map<std::string, int64_t> out;
  if (!v.IsObject()) return out;
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array names = o.GetPropertyNames();
  for (uint32_t i = 0; i < names.Length(); ++i) {
    const std::string name = names.Get(i).As<Napi::String>();
    out[name] = o.Get(name).As<Napi::Number>().Int64Value();
  }
  return out;
}

std::map<std::string, RowWrite> ReadWrites(const Napi::Value& v) {
  std::map<std::string, RowWrite> out;
  if (!v.IsObject()) return out;
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array names = o.GetPropertyNames();
  for (uint32_t i = 0; i < names.Length(); ++i) {
    const std::string name = names.Get(i).As<Napi::String>();
    Napi::Object w = o.Get(name).As<Napi::Object>();
    out[name] = RowWrite{ReadInt(w, "handle"), static_cast<int>(ReadInt(w, "axis")), ReadInt(w, "offset")};
  }
  return out;
}

template <typename T>
Napi::Value Typed(Napi::Env env, const HostTensor& t) {
  auto arr = Napi::TypedArrayOf<T>::New(env, t.bytes.size() / sizeof(T));
  if (!t.bytes.empty()) std::memcpy(arr.Data(), t.bytes.data(), t.bytes.size());
  return arr;
}

Napi::Value ToJs(Napi::Env env, const HostTensor& t) {
  Napi::Value data;
  if (t.dtype == "float32")
    data = Typed<float>(env, t);
  else if (t.dtype == "float16")
    data = Typed<uint16_t>(env, t);
  else if (t.dtype == "int64")
    data = Typed<int64_t>(env, t);
  else if (t.dtype == "int32")
    data = Typed<int32_t>(env, t);
  else if (t.dtype == "int8")
    data = Typed<int8_t>(env, t);
  else
    data = Typed<uint8_t>(env, t);  // uint8, bool
  Napi::Array dims = Napi::Array::New(env, t.dims.size());
  for (size_t i = 0; i < t.dims.size(); ++i) dims.Set(static_cast<uint32_t>(i), static_cast<double>(t.dims[i]));
  Napi::Object o = Napi::Object::New(env);
  o.Set("dtype", t.dtype);
  o.Set("dims", dims);
  o.Set("data", data);
  return o;
}

// ---- the engine object ----

class TrtEngine : public Napi::ObjectWrap<TrtEngine> {
 public:
  static Napi::FunctionReference& Constructor() {
    static Napi::FunctionReference* ctor = new Napi::FunctionReference();  // lives for the process
    return *ctor;
  }
  static void Define(Napi::Env env) {
    Napi::Function fn =
        DefineClass(env, "TrtEngine",
                    {InstanceMethod<&TrtEngine::Run>("run"), InstanceMethod<&TrtEngine::Allocate>("allocate"),
                     InstanceMethod<&TrtEngine::CopyRows>("copyRows"), InstanceMethod<&TrtEngine::Read>("read"),
                     InstanceMethod<&TrtEngine::Release>("release"), InstanceMethod<&TrtEngine::Dispose>("dispose"),
                     InstanceAccessor<&TrtEngine::Io>("io"), InstanceAccessor<&TrtEngine::MappedIo>("mappedIo")});
    Constructor() = Napi::Persistent(fn);
    Constructor().SuppressDestruct();
  }

  explicit TrtEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrtEngine>(info) {}
  void Attach(std::shared_ptr<EngineSession> session) { session_ = std::move(session); }

 private:
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Allocate(const Napi::CallbackInfo& info);
  Napi::Value CopyRows(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value MappedIo(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), session_ && session_->mappedIo());
  }
  // The session, or a JS error when it is disposed (JS thread).
  std::shared_ptr<EngineSession> Session(const Napi::CallbackInfo& info) const {
    if (!session_) throw Napi::Error::New(info.Env(), "the engine is disposed");
    return session_;
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    session_.reset();  // in-flight runs hold their own reference
    return info.Env().Undefined();
  }
  Napi::Value Io(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!session_) return Napi::Array::New(env);
    const auto& io = session_->engine().io();
    Napi::Array out = Napi::Array::New(env, io.size());
    for (size_t i = 0; i < io.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", io[i].name);
      o.Set("mode", io[i].isInput ? "input" : "output");
      o.Set("dtype", io[i].dtype);
      Napi::Array shape = Napi::Array::New(env, io[i].shape.size());
      for (size_t k = 0; k < io[i].shape.size(); ++k)
        shape.Set(static_cast<uint32_t>(k), static_cast<double>(io[i].shape[k]));
      o.Set("shape", shape);
      out.Set(static_cast<uint32_t>(i), o);
    }
    return out;
  }

  std::shared_ptr<EngineSession> session_;
};

// ---- workers: Execute() runs on a libuv thread and never touches JS ----

// The stable code of a failed call: the session and builder throw std::invalid_argument for what
// the caller passed wrong (a shape outside the profiles, an unknown handle, a bad row write), which
// the TypeScript side reports as BAD_ARGUMENT; anything else is INTERNAL.
inline const char* CodeOf(const std::exception& e) {
  return dynamic_cast<const std::invalid_argument*>(&e) != nullptr ? "BAD_ARGUMENT" : "INTERNAL";
}

class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  // On the worker thread: keep the message and the code for OnError.
  void Fail(const std::exception& e) {
    code_ = CodeOf(e);
    SetError(e.what());
  }
  void OnError(const Napi::Error& e) override {
    e.Value().Set("code", Napi::String::New(Env(), code_));
    deferred_.Reject(e.Value());
  }
  Napi::Promise::Deferred deferred_;
  const char* code_ = "INTERNAL";
};

class LoadWorker : public PromiseWorker {
 public:
  LoadWorker(Napi::Env env, std::string plan, int device)
      : PromiseWorker(env), plan_(std::move(plan)), device_(device) {}
  void Execute() override {
    try {
      session_ = std::make_shared<EngineSession>(Engine::Load(plan_, device_));
    } catch (const std::exception& e) {
      Fail(e);
    }
  }
  void OnOK() override {
    Napi::Object obj = TrtEngine::Constructor().New({});
    TrtEngine::Unwrap(obj)->Attach(std::move(session_));
    deferred_.Resolve(obj);
  }

 private:
  std::string plan_;
  int device_;
  std::shared_ptr<EngineSession> session_;
};

class RunWorker : public PromiseWorker {
 public:
  RunWorker(Napi::Env env, std::shared_ptr<EngineSession> session, TensorMap inputs,
            std::map<std::string, int64_t> resident, std::map<std::string, RowWrite> writes)
      : PromiseWorker(env),
        session_(std::move(session)),
        inputs_(std::move(inputs)),
        resident_(std::move(resident)),
        writes_(std::move(writes)) {}
  void Execute() override {
    try {
      outputs_ = session_->Run(inputs_, resident_, writes_);
    } catch (const std::exception& e) {
      Fail(e);
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object out = Napi::Object::New(env);
    for (const auto& [name, t] : outputs_) out.Set(name, ToJs(env, t));
    deferred_.Resolve(out);
  }

 private:
  std::shared_ptr<EngineSession> session_;
  TensorMap inputs_;
  std::map<std::string, int64_t> resident_;
  std::map<std::string, RowWrite> writes_;
  TensorMap outputs_;
};

// A session call with no result (allocate, copy, release), off the JS thread.
class SessionCallWorker : public PromiseWorker {
 public:
  SessionCallWorker(Napi::Env env, std::function<void()> call) : PromiseWorker(env), call_(std::move(call)) {}
  void Execute() override {
    try {
      call_();
    } catch (const std::exception& e) {
      Fail(e);
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }

 private:
  std::function<void()> call_;
};

class ReadWorker : public PromiseWorker {
 public:
  ReadWorker(Napi::Env env, std::shared_ptr<EngineSession> session, int64_t handle)
      : PromiseWorker(env), session_(std::move(session)), handle_(handle) {}
  void Execute() override {
    try {
      out_ = session_->Read(handle_);
    } catch (const std::exception& e) {
      Fail(e);
    }
  }
  void OnOK() override { deferred_.Resolve(ToJs(Env(), out_)); }

 private:
  std::shared_ptr<EngineSession> session_;
  int64_t handle_;
  HostTensor out_;
};

Napi::Value Queued(PromiseWorker* worker) {
  Napi::Promise p = worker->Promise();
  worker->Queue();  // Node-API frees the worker when it completes
  return p;
}

Napi::Value TrtEngine::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<EngineSession> session = Session(info);
  if (info.Length() < 1 || !info[0].IsObject()) {
    throw Napi::TypeError::New(env, "run(feeds, resident?, writes?) needs an object of tensors");
  }
  TensorMap feeds = ReadFeeds(info[0].As<Napi::Object>());
  return Queued(new RunWorker(env, session, std::move(feeds), ReadHandles(info[1]), ReadWrites(info[2])));
}

Napi::Value TrtEngine::Allocate(const Napi::CallbackInfo& info) {
  std::shared_ptr<EngineSession> session = Session(info);
  if (info.Length() < 1 || !info[0].IsArray()) {
    throw Napi::TypeError::New(info.Env(), "allocate(tensors) needs an array");
  }
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<ResidentSpec> specs;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Object o = a.Get(i).As<Napi::Object>();
    specs.push_back(ResidentSpec{ReadInt(o, "handle"), o.Get("dtype").As<Napi::String>(), ReadInts(o.Get("dims"))});
  }
  return Queued(new SessionCallWorker(info.Env(), [session, specs]() { session->Allocate(specs); }));
}

Napi::Value TrtEngine::CopyRows(const Napi::CallbackInfo& info) {
  std::shared_ptr<EngineSession> session = Session(info);
  if (info.Length() < 1 || !info[0].IsArray()) {
    throw Napi::TypeError::New(info.Env(), "copyRows(copies) needs an array");
  }
  Napi::Array a = info[0].As<Napi::Array>();
  std::vector<ResidentCopy> copies;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Object o = a.Get(i).As<Napi::Object>();
    copies.push_back(ResidentCopy{ReadInt(o, "from"), ReadInt(o, "to"), static_cast<int>(ReadInt(o, "axis")),
                                  ReadInt(o, "rows"), ReadInt(o, "fromOffset"), ReadInt(o, "toOffset")});
  }
  return Queued(new SessionCallWorker(info.Env(), [session, copies]() { session->CopyRows(copies); }));
}

Napi::Value TrtEngine::Read(const Napi::CallbackInfo& info) {
  std::shared_ptr<EngineSession> session = Session(info);
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "read(handle) needs a number");
  return Queued(new ReadWorker(info.Env(), session, info[0].As<Napi::Number>().Int64Value()));
}

Napi::Value TrtEngine::Release(const Napi::CallbackInfo& info) {
  std::shared_ptr<EngineSession> session = Session(info);
  if (info.Length() < 1 || !info[0].IsArray()) {
    throw Napi::TypeError::New(info.Env(), "release(handles) needs an array");
  }
  std::vector<int64_t> handles = ReadInts(info[0]);
  // Off the JS thread: it waits for the session's mutex, which a run may hold.
  return Queued(new SessionCallWorker(info.Env(), [session, handles]() { session->Release(handles); }));
}

struct Progress {
  std::string phase;
  int step = 0;
  int steps = 0;
};

class BuildWorker : public Napi::AsyncProgressQueueWorker<Progress> {
 public:
  BuildWorker(Napi::Env env, BuildOptions options, Napi::Function onProgress, CancelFlag cancel)
      : Napi::AsyncProgressQueueWorker<Progress>(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        options_(std::move(options)),
        cancel_(std::move(cancel)) {
    if (!onProgress.IsEmpty()) onProgress_ = Napi::Persistent(onProgress);
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute(const ExecutionProgress& progress) override {
    try {
      EngineBuilder builder(
          options_,
          [&progress](const std::string& phase, int step, int steps) {
            Progress p{phase, step, steps};
            progress.Send(&p, 1);
          },
          cancel_);
      result_ = builder.Build();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnProgress(const Progress* data, size_t count) override {
    if (onProgress_.IsEmpty()) return;
    Napi::Env env = Env();
    for (size_t i = 0; i < count; ++i) {
      onProgress_.Call({Napi::String::New(env, data[i].phase), Napi::Number::New(env, data[i].step),
                        Napi::Number::New(env, data[i].steps)});
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("bytes", static_cast<double>(result_.bytes));
    o.Set("seconds", result_.seconds);
    Napi::Array warnings = Napi::Array::New(env, result_.warnings.size());
    for (size_t i = 0; i < result_.warnings.size(); ++i) warnings.Set(static_cast<uint32_t>(i), result_.warnings[i]);
    o.Set("warnings", warnings);
    deferred_.Resolve(o);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  BuildOptions options_;
  CancelFlag cancel_;  // shared with the cancel() function handed to JavaScript
  BuildResult result_;
  Napi::FunctionReference onProgress_;
};

// ---- exported functions (JS thread) ----

Napi::Value LoadEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "trtLoadEngine(plan: string, device: number)");
  }
  auto* worker = new LoadWorker(env, info[0].As<Napi::String>(), info[1].As<Napi::Number>().Int32Value());
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

Napi::Value BuildEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "trtBuildEngine(options, onProgress?)");
  Napi::Object o = info[0].As<Napi::Object>();
  BuildOptions options;
  options.onnxPath = o.Get("onnx").As<Napi::String>();
  options.planPath = o.Get("plan").As<Napi::String>();
  options.workspaceBytes = static_cast<size_t>(o.Get("workspaceBytes").As<Napi::Number>().Int64Value());
  if (o.Get("timingCache").IsString()) options.timingCachePath = o.Get("timingCache").As<Napi::String>();
  if (o.Get("device").IsNumber()) options.device = o.Get("device").As<Napi::Number>().Int32Value();
  Napi::Array profiles = o.Get("profiles").As<Napi::Array>();
  for (uint32_t i = 0; i < profiles.Length(); ++i) {
    Napi::Object p = profiles.Get(i).As<Napi::Object>();
    std::map<std::string, ShapeRange> ranges;
    Napi::Array names = p.GetPropertyNames();
    for (uint32_t k = 0; k < names.Length(); ++k) {
      const std::string name = names.Get(k).As<Napi::String>();
      Napi::Object r = p.Get(name).As<Napi::Object>();
      ranges[name] = ShapeRange{ReadInts(r.Get("min")), ReadInts(r.Get("opt")), ReadInts(r.Get("max"))};
    }
    options.profiles.push_back(std::move(ranges));
  }
  Napi::Function onProgress =
      info.Length() > 1 && info[1].IsFunction() ? info[1].As<Napi::Function>() : Napi::Function();
  CancelFlag cancel = std::make_shared<std::atomic<bool>>(false);
  if (info.Length() > 2 && info[2].IsFunction()) {
    // Setting the flag is all cancel() does: safe on the JS thread while the build runs on a worker.
    Napi::Function cancelFn = Napi::Function::New(
        env, [cancel](const Napi::CallbackInfo&) { cancel->store(true); }, "cancelBuild");
    info[2].As<Napi::Function>().Call({cancelFn});
  }
  auto* worker = new BuildWorker(env, std::move(options), onProgress, cancel);
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

void Init(Napi::Env env, Napi::Object exports) {
  TrtEngine::Define(env);
  exports.Set("trtLoadEngine", Napi::Function::New(env, LoadEngine, "trtLoadEngine"));
  exports.Set("trtBuildEngine", Napi::Function::New(env, BuildEngine, "trtBuildEngine"));
}

}  // namespace

SETOKIM_ADDON_MODULE(Init);

#endif  // SETOKIM_WITH_TENSORRT
