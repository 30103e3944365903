#include "api/api_connection.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>

#include "elsa/engine/api.h"
#include "elsa/json_reader.h"
#include "elsa/thread_set.h"

namespace elsa {

using nlohmann::json;

Result<std::string> ApiConnection::ReadLine(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  size_t nl;
  while ((nl = buffer_.find('\n')) == std::string::npos) {
    if (buffer_.size() > max_line_bytes_)
      return Status::InvalidArgument("line longer than " + std::to_string(max_line_bytes_ >> 20) + " MiB");
    int left_ms = -1;
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Status::Timeout("nothing within " + std::to_string(timeout_ms / 1000) + " s");
      left_ms = static_cast<int>(left.count());
    }
    ELSA_RETURN_IF_ERROR(ReadMore(buffer_, left_ms));
  }
  std::string line = buffer_.substr(0, nl);
  buffer_.erase(0, nl + 1);
  return line;
}

Status SocketConnection::WriteLine(std::string_view line) {
  std::string whole(line);
  whole += '\n';
  std::lock_guard lock(write_mu_);
  for (std::string_view rest = whole; !rest.empty();) {
    ssize_t n = ::send(fd_.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("send", errno);
    rest.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status SocketConnection::ReadMore(std::string& buffer, int timeout_ms) {
  char chunk[65536];
  for (;;) {
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return Status::Timeout("nothing within " + std::to_string(timeout_ms / 1000) + " s");
    ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno("recv", errno);
    if (n == 0) return Status::PeerClosed("connection closed before a full line");
    buffer.append(chunk, static_cast<size_t>(n));
    return Status::Ok();
  }
}

void ServeApiConnection(Agent& agent, ApiConnection& connection, const RequestGate& gate) {
  auto send = [&](const json& j) {
    (void)connection.WriteLine(DumpJson(j));  // messages quote CRIU's logs: any bytes at all
  };
  auto line = connection.ReadLine(kRequestLineTimeoutMs);
  if (!line.ok()) return send(ErrorJson(line.status()));
  if (gate) {
    Status allowed = gate(json::parse(*line, nullptr, /*allow_exceptions=*/false));
    if (!allowed.ok()) return send(ErrorJson(allowed));
  }
  send(HandleRequest(agent, *line, send, [&](int timeout_ms) { return connection.ReadLine(timeout_ms); }));
}

void AcceptClients(int listen_fd, const std::atomic<bool>& stop, size_t max_clients,
                   const std::function<void(UniqueFd client)>& serve) {
  ThreadSet clients;  // joined on return: long operations (a dump) finish before the agent goes
  while (!stop.load()) {
    pollfd p{listen_fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    UniqueFd client(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!client) continue;
    if (clients.running() >= max_clients) continue;  // closed: the client may come back later
    clients.Start([&serve, client = std::move(client)]() mutable { serve(std::move(client)); });
  }
}

}  // namespace elsa
