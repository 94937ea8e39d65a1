// systemd's service notification protocol (sd_notify(3)) without libsystemd: one datagram with
// "KEY=VALUE" lines to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or "@name" for the
// abstract namespace). The agent uses it for READY=1, WATCHDOG=1 and STOPPING=1.
// Thread safety: Send() may be called from any thread; it holds no state (one socket per call).
#pragma once
#include <string>

namespace setokim {

class SdNotifier {
 public:
  // Sends `state` to `socket_path`. Returns an empty string on success, else why it failed
  // (an empty or too long path, or the errno of socket/sendto).
  static std::string Send(const std::string& socket_path, const std::string& state);
};

}  // namespace setokim
