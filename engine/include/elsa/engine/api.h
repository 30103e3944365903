// The agent's API: JSON lines over a Unix stream socket (root only, every op), and, with
// `elsad --api-listen`, over TCP with TLS 1.3 for the hub and `elsa --agent HOST:PORT`
// (elsa/engine/tls_api_server.h: mutual TLS and/or bearer tokens, each client with a scope).
//
// A client sends one request object on one line, e.g. {"op":"checkpoint","name":"alice"}.
// The agent answers with zero or more event lines {"event":"progress","phase":..,"detail":..,
// and the ProgressEvent fields that are set: "round", "bytes_done", "bytes_total", "pages",
// "rate_bytes_per_s", "eta_seconds", "seconds"}
// and then exactly one final line: {"ok":true,"result":{...}} or
// {"ok":false,"error":{"code":"not_found","message":"..."}}; then it closes the connection.
// Ops: version, run, ps, session, stop, checkpoint, restore, checkpoints, rm, verify (one, or all
// without a checkpoint), gc, migrate.
//
// The freeze gate: a migrate request with "freeze_gate": true gets {"event":"freeze-gate"} once
// pre-copy is done and the agent is about to freeze the session; the client answers on the same
// connection with {"freeze": true} to go on, or anything else ({"freeze": false, "reason": ..})
// to cancel with the session still running. No answer within kFreezeGateSeconds cancels too.
//
// Over TLS, a client with a token sends it in the request object's "token" field (a connection
// carries one request); the agent checks it, then the client's scope (elsa/engine/api_auth.h),
// before anything else: {"ok":false,"error":{"code":"unauthenticated",..}} for a token or
// certificate it does not know, "permission_denied" for an op beyond the client's scope. The
// freeze gate's answer needs no token. A client speaking plain text gets one plain JSON error
// line; nothing is served without TLS.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "elsa/engine/agent.h"
#include "elsa/engine/migration_mode.h"
#include "elsa/engine/progress.h"
#include "elsa/unique_fd.h"
#include "elsa/status.h"

namespace elsa {

constexpr const char* kDefaultSocketPath = "/run/elsa/elsad.sock";
constexpr size_t kMaxRequestBytes = 1 << 20;
constexpr int kFreezeGateSeconds = 10;

// JSON shapes shared by the server and its clients.
nlohmann::json ToJson(const SessionInfo& info);
nlohmann::json ToJson(const Manifest& manifest, bool with_files);
nlohmann::json ToJson(const CheckpointReport& report);
nlohmann::json ToJson(const RestoreReport& report);
nlohmann::json ToJson(const CollectReport& report);
nlohmann::json ToJson(const MigrateReport& report);
nlohmann::json ToJson(const ProgressEvent& event);  // {"event":"progress", ...}
nlohmann::json ErrorJson(const Status& status);
// Maps an error object back into a Status (client side).
Status StatusFromErrorJson(const nlohmann::json& error);

using EventFn = std::function<void(const nlohmann::json& event)>;
// Reads the client's next line (the freeze gate's answer), waiting at most `timeout_ms`.
using ReadLineFn = std::function<Result<std::string>(int timeout_ms)>;

// A request line, decoded and type-checked (values are validated by the agent).
struct ApiRequest {
  std::string op;
  std::string name;        // session name (run, session, stop, checkpoint; restore's new name)
  std::string checkpoint;  // checkpoint id (restore, rm, verify; verify without one: all)
  std::vector<std::string> argv, env;
  std::string workdir = "/";
  bool leave_running = false;
  bool lazy = false;  // restore
  int timeout_seconds = 10;
  std::string to;               // migrate: HOST[:PORT] of the destination agent
  MigrationMode mode = MigrationMode::kHybrid;  // migrate
  int max_downtime_ms = 150;    // migrate
  bool freeze_gate = false;     // migrate: wait for the client's go before the freeze
};
// Untrusted bytes in, a request or an InvalidArgument out. Never throws.
Result<ApiRequest> ParseApiRequest(std::string_view line);

// Handles one decoded request against the agent; events go to `emit`, the freeze gate's answer
// comes from `read_line` (without one, a gated request is refused). Never throws.
nlohmann::json HandleRequest(Agent& agent, const std::string& request_line, const EventFn& emit,
                             const ReadLineFn& read_line = {});

class ApiServer {
 public:
  ApiServer(Agent& agent, std::string socket_path);
  ~ApiServer();
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // Binds the socket (directory 0700, socket 0600). Refuses if another agent answers there.
  Status Listen();
  // Accepts clients until `stop` becomes true (checked at least every 200 ms).
  void Serve(const std::atomic<bool>& stop);

 private:
  Agent& agent_;
  std::string socket_path_;
  UniqueFd listen_fd_;
};

// Where a client finds the agent: its Unix socket, or its TLS API.
struct AgentEndpoint {
  std::string socket_path = kDefaultSocketPath;  // used when `address` is empty
  std::string address;    // HOST:PORT of elsad --api-listen; the certificate must name HOST
  std::string ca_file;    // the CA the agent's certificate comes from (required with `address`)
  std::string cert_file;  // the client's certificate and key (mutual TLS), or none
  std::string key_file;
  std::string token;      // bearer token, or none
  std::string Describe() const { return address.empty() ? socket_path : address; }
};

// The token in `path`: its first line, blanks around it removed.
Result<std::string> ReadClientToken(const std::string& path);

// Client: sends `request`, passes events to `on_event`, returns the final result object.
// Unavailable (with instructions to start the agent) when nothing listens on `socket_path`.
Result<nlohmann::json> CallAgent(const std::string& socket_path, const nlohmann::json& request,
                                 const EventFn& on_event = {});
// The same over the endpoint's transport; over TLS, errors say which side refused what (the
// agent's certificate, the client's, the token, the scope).
Result<nlohmann::json> CallAgent(const AgentEndpoint& endpoint, const nlohmann::json& request,
                                 const EventFn& on_event = {});

}  // namespace elsa
