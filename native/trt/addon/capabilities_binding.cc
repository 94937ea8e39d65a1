// capabilities(): what was compiled in and what the machine has now.
#include "addon/module.h"
#include "common/capabilities.h"

namespace {

Napi::Value Capabilities(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const setokim::Capabilities caps = setokim::ProbeCapabilities();
  Napi::Object compiled = Napi::Object::New(env);
  compiled.Set("cuda", caps.cuda);
  compiled.Set("cudaVersion", caps.cuda ? Napi::Value(Napi::String::New(env, caps.cudaVersion)) : env.Null());
  compiled.Set("cudaArchitectures", Napi::String::New(env, caps.cudaArchitectures));
  compiled.Set("tensorrt", caps.tensorrt);
  compiled.Set("tensorrtVersion",
               caps.tensorrt ? Napi::Value(Napi::String::New(env, caps.tensorrtVersion)) : env.Null());
  compiled.Set("simd", caps.simd);

  Napi::Array gpus = Napi::Array::New(env, caps.gpus.size());
  for (size_t i = 0; i < caps.gpus.size(); ++i) {
    const auto& g = caps.gpus[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", g.index);
    o.Set("name", g.name);
    o.Set("computeCapability", std::to_string(g.major) + "." + std::to_string(g.minor));
    o.Set("totalMemoryBytes", static_cast<double>(g.totalMemoryBytes));
    gpus[i] = o;
  }
  Napi::Object present = Napi::Object::New(env);
  present.Set("gpus", gpus);
  present.Set("cudaDriverVersion", caps.cudaDriverVersion);
  present.Set("gpuProbeError",
              caps.gpuProbeError.empty() ? env.Null() : Napi::Value(Napi::String::New(env, caps.gpuProbeError)));
  present.Set("tensorrtLibraryVersion", caps.tensorrtLibraryVersion.empty()
                                            ? env.Null()
                                            : Napi::Value(Napi::String::New(env, caps.tensorrtLibraryVersion)));
  Napi::Object out = Napi::Object::New(env);
  out.Set("compiled", compiled);
  out.Set("present", present);
  return out;
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("capabilities", Napi::Function::New(env, Capabilities, "capabilities"));
}

}  // namespace

SETOKIM_ADDON_MODULE(Init);
