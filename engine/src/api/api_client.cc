#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include "elsa/engine/api.h"
#include "elsa/json_reader.h"

namespace elsa {

using nlohmann::json;

Result<json> CallAgent(const std::string& socket_path, const json& request, const EventFn& on_event) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof addr.sun_path) return Status::InvalidArgument("socket path too long: " + socket_path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket", errno);
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path.c_str());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    std::string why = err == EACCES ? "permission denied: the agent serves root only (use sudo)"
                                    : std::string(std::strerror(err));
    return Status::Unavailable("cannot reach the Elsa agent at " + socket_path + " (" + why +
                               "). Start it as root with `elsad --daemon` (or `elsad` in a terminal), "
                               "using the same --socket if you changed it.");
  }
  std::string line = DumpJson(request) + "\n";
  for (std::string_view rest = line; !rest.empty();) {
    ssize_t n = ::send(fd.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno("send to agent", errno);
    }
    rest.remove_prefix(static_cast<size_t>(n));
  }
  std::string buffer;
  char chunk[65536];
  for (;;) {
    size_t nl;
    while ((nl = buffer.find('\n')) != std::string::npos) {
      json msg = json::parse(buffer.substr(0, nl), nullptr, false);
      buffer.erase(0, nl + 1);
      if (msg.is_discarded() || !msg.is_object()) return Status::Corruption("the agent sent a line that is not JSON");
      if (msg.contains("event")) {
        if (on_event) on_event(msg);
        continue;
      }
      if (msg.value("ok", false)) return msg.contains("result") ? msg["result"] : json::object();
      return StatusFromErrorJson(msg.value("error", json::object()));
    }
    ssize_t n = ::recv(fd.get(), chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("recv from agent", errno);
    if (n == 0) return Status::Unavailable("the agent closed the connection without an answer");
    buffer.append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace elsa
