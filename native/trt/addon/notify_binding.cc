// sdNotify(socketPath, state): one sd_notify(3) datagram (common/sd_notifier.h); throws with the
// reason when it cannot be sent. Runs on the JS thread (a datagram send does not block).
#include "addon/module.h"
#include "common/sd_notifier.h"

namespace {

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "sdNotify(socketPath: string, state: string)");
  }
  const std::string socket = info[0].As<Napi::String>();
  const std::string error = setokim::SdNotifier::Send(socket, info[1].As<Napi::String>());
  if (!error.empty()) throw Napi::Error::New(env, "sd_notify to " + socket + ": " + error);
  return env.Undefined();
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
}

}  // namespace

SETOKIM_ADDON_MODULE(Init);
