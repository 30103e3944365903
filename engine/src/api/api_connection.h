// One API client's connection, whatever carries it (the Unix socket, TLS over TCP), and the
// per-client exchange shared by every transport: the request line, its events, the freeze gate's
// answer and the final reply.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "elsa/engine/agent.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

// How long a connected client may take to send its request line.
constexpr int kRequestLineTimeoutMs = 30000;

class ApiConnection {
 public:
  explicit ApiConnection(size_t max_line_bytes) : max_line_bytes_(max_line_bytes) {}
  virtual ~ApiConnection() = default;
  ApiConnection(const ApiConnection&) = delete;
  ApiConnection& operator=(const ApiConnection&) = delete;

  // The next line, without its '\n'. Timeout after `timeout_ms` (negative: no limit); an error
  // when the line grows past the bound or the other end closes first.
  Result<std::string> ReadLine(int timeout_ms);
  // Sends `line` and a '\n' as one piece (events may come from several threads).
  virtual Status WriteLine(std::string_view line) = 0;

 protected:
  // Appends what arrives within `timeout_ms` (negative: no limit) to `buffer`.
  virtual Status ReadMore(std::string& buffer, int timeout_ms) = 0;

 private:
  const size_t max_line_bytes_;
  std::string buffer_;  // bytes past the last line returned (a client may send ahead)
};

// A plain stream socket (the Unix socket's clients, and the agent's own client of it).
class SocketConnection final : public ApiConnection {
 public:
  SocketConnection(UniqueFd fd, size_t max_line_bytes) : ApiConnection(max_line_bytes), fd_(std::move(fd)) {}
  int fd() const { return fd_.get(); }
  Status WriteLine(std::string_view line) override;

 protected:
  Status ReadMore(std::string& buffer, int timeout_ms) override;

 private:
  UniqueFd fd_;
  std::mutex write_mu_;
};

// Ok, or why this client may not make this request (it sees the request decoded; it is not a
// JSON object when the client sent garbage).
using RequestGate = std::function<Status(const nlohmann::json& request)>;

// Serves one request on `connection`: reads it, asks `gate` (none: everything allowed), runs it
// with its events and the freeze gate's answer on the same connection, and sends the reply.
void ServeApiConnection(Agent& agent, ApiConnection& connection, const RequestGate& gate);

// Accepts on `listen_fd` until `stop` (checked every 200 ms), each client on a thread of its own
// running `serve`. A connection beyond `max_clients` at once is closed unanswered. Returns once
// every client's thread is done.
void AcceptClients(int listen_fd, const std::atomic<bool>& stop, size_t max_clients,
                   const std::function<void(UniqueFd client)>& serve);

}  // namespace elsa
