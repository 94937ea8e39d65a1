// The addon's entry point: runs every registered binding module's init.
#include "addon/module.h"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  for (auto init : setokim::addon::Modules()) init(env, exports);
  return exports;
}
}  // namespace

NODE_API_MODULE(setokim, Init)
