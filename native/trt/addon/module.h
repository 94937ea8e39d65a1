// Each binding file registers itself with SETOKIM_ADDON_MODULE, so adding a binding never means
// editing a central list. Called on the JS thread at module load.
#pragma once
#include <napi.h>

#include <vector>

namespace setokim::addon {

using ModuleInit = void (*)(Napi::Env env, Napi::Object exports);

inline std::vector<ModuleInit>& Modules() {
  static std::vector<ModuleInit> modules;
  return modules;
}

struct ModuleRegistrar {
  explicit ModuleRegistrar(ModuleInit init) { Modules().push_back(init); }
};

}  // namespace setokim::addon

#define SETOKIM_ADDON_MODULE(init_fn) static ::setokim::addon::ModuleRegistrar setokim_registrar_##init_fn(init_fn)
