// flock(fd, op) -> boolean: flock(2) on a file descriptor the JS side opened (src/engine/file-lock.ts).
//   op 'exclusive': LOCK_EX | LOCK_NB; true when taken, false when another open file holds it
//   op 'unlock':    LOCK_UN; true
// Never blocks: a lock held elsewhere answers false at once. The kernel drops the lock when the
// last descriptor of the open file closes, so a process that dies (kill -9, power loss: the file
// is not even locked after a reboot) leaves no stale lock. Other errors throw an Error with the
// errno text. Called on the JS thread only.
#include <sys/file.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "addon/module.h"

namespace {

Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 2 || !info[0].IsNumber() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "flock(fd: number, op: 'exclusive' | 'unlock')");
  }
  const int fd = info[0].As<Napi::Number>().Int32Value();
  const std::string op = info[1].As<Napi::String>().Utf8Value();
  int how = 0;
  if (op == "exclusive") {
    how = LOCK_EX | LOCK_NB;
  } else if (op == "unlock") {
    how = LOCK_UN;
  } else {
    throw Napi::TypeError::New(env, "flock: op must be 'exclusive' or 'unlock', got '" + op + "'");
  }
  int rc = 0;
  do {
    rc = ::flock(fd, how);
  } while (rc != 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  throw Napi::Error::New(env, std::string("flock(") + std::to_string(fd) + ", " + op + "): " + std::strerror(errno));
}

void Init(Napi::Env env, Napi::Object exports) { exports.Set("flock", Napi::Function::New(env, Flock, "flock")); }

}  // namespace

SETOKIM_ADDON_MODULE(Init);
