#include "common/sd_notifier.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace setokim {
namespace {

// Closes the socket on every path out of Send.
class Socket {
 public:
  Socket() : fd_(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

std::string SdNotifier::Send(const std::string& socket_path, const std::string& state) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || (socket_path[0] != '/' && socket_path[0] != '@')) {
    return "NOTIFY_SOCKET must be an absolute path or an @abstract name";
  }
  if (socket_path.size() >= sizeof(addr.sun_path)) return "NOTIFY_SOCKET is longer than a socket address holds";
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());
  if (socket_path[0] == '@') {
    addr.sun_path[0] = '\0';  // abstract namespace: no terminating NUL counted
  } else {
    len += 1;  // a path: the terminating NUL
  }
  Socket sock;
  if (sock.fd() < 0) return Errno("socket");
  const ssize_t sent =
      ::sendto(sock.fd(), state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), len);
  if (sent < 0) return Errno("sendto");
  if (static_cast<size_t>(sent) != state.size()) return "sendto: the datagram was truncated";
  return "";
}

}  // namespace setokim
