#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "api/api_connection.h"
#include "elsa/engine/api.h"
#include "elsa/file_util.h"
#include "elsa/json_reader.h"

namespace elsa {

using nlohmann::json;

namespace {

// Root clients of the Unix socket at once (the hub polls and migrates in parallel).
constexpr size_t kMaxUnixClients = 128;

json Ok(json result) { return {{"ok", true}, {"result", std::move(result)}}; }

// The client's go (or not) at the freeze gate, as a Status the migration acts on.
Status AwaitFreezeGo(const EventFn& emit, const ReadLineFn& read_line) {
  emit({{"event", "freeze-gate"}});
  auto line = read_line(kFreezeGateSeconds * 1000);
  if (!line.ok())
    return Status::Cancelled("cancelled before the freeze: no go from the client (" + line.status().message() + ")");
  json answer = json::parse(*line, nullptr, /*allow_exceptions=*/false);
  if (answer.is_object() && answer.value("freeze", false) == true) return Status::Ok();
  std::string reason = "no reason given";
  if (answer.is_object() && answer.contains("reason") && answer["reason"].is_string())
    reason = answer["reason"].get<std::string>();
  return Status::Cancelled("cancelled before the freeze by the client: " + reason);
}

json ExecuteRequest(Agent& agent, const ApiRequest& req, const EventFn& emit, const ReadLineFn& read_line) {
  auto progress = [&](const ProgressEvent& event) { emit(ToJson(event)); };
  const std::string& o = req.op;
  if (o == "version") {
    json j = {{"agent", "elsad"}, {"api", 1}, {"state_dir", agent.config().state_dir}};
    auto criu = agent.CriuBinary();
    j["criu"] = criu.ok() ? json(*criu) : json(nullptr);
    if (!criu.ok()) j["criu_problem"] = criu.status().message();
    const auto pages = agent.PageStoreStats();
    j["page_store"] = {{"unique_pages", pages.unique_pages}, {"stored_bytes", pages.stored_bytes}};
    return Ok(j);
  }
  if (o == "ps") {
    json list = json::array();
    for (const auto& s : agent.Sessions()) list.push_back(ToJson(s));
    return Ok(list);
  }
  if (o == "checkpoints") {
    auto list = agent.Checkpoints();
    if (!list.ok()) return ErrorJson(list.status());
    json out = json::array();
    for (const auto& m : *list) out.push_back(ToJson(m, false));
    return Ok(out);
  }
  if (o == "run") {
    auto info = agent.Run({req.name, req.argv, req.env, req.workdir});
    return info.ok() ? Ok(ToJson(*info)) : ErrorJson(info.status());
  }
  if (o == "session") {
    auto info = agent.GetSession(req.name);
    return info.ok() ? Ok(ToJson(*info)) : ErrorJson(info.status());
  }
  if (o == "stop") {
    Status s = agent.Stop(req.name, req.timeout_seconds);
    return s.ok() ? Ok({{"stopped", req.name}}) : ErrorJson(s);
  }
  if (o == "checkpoint") {
    auto report = agent.Checkpoint(req.name, req.leave_running, progress);
    return report.ok() ? Ok(ToJson(*report)) : ErrorJson(report.status());
  }
  if (o == "restore") {
    auto report = agent.Restore(req.checkpoint, {req.name, req.lazy}, progress);
    return report.ok() ? Ok(ToJson(*report)) : ErrorJson(report.status());
  }
  if (o == "migrate") {
    MigrateOptions options;
    options.to = req.to;
    options.mode = req.mode;
    options.max_downtime_ms = req.max_downtime_ms;
    if (req.freeze_gate) {
      if (!read_line) return ErrorJson(Status::InvalidArgument("this connection cannot answer a freeze gate"));
      options.before_freeze = [&] { return AwaitFreezeGo(emit, read_line); };
    }
    auto report = agent.Migrate(req.name, options, progress);
    return report.ok() ? Ok(ToJson(*report)) : ErrorJson(report.status());
  }
  if (o == "rm") {
    auto collected = agent.RemoveCheckpoint(req.checkpoint);
    if (!collected.ok()) return ErrorJson(collected.status());
    return Ok({{"removed", req.checkpoint}, {"page_store", ToJson(*collected)}});
  }
  if (o == "gc") {
    auto collected = agent.CollectGarbage();
    return collected.ok() ? Ok(ToJson(*collected)) : ErrorJson(collected.status());
  }
  if (o == "verify" && !req.checkpoint.empty()) {
    auto m = agent.VerifyCheckpoint(req.checkpoint);
    return m.ok() ? Ok(ToJson(*m, true)) : ErrorJson(m.status());
  }
  if (o == "verify") {
    auto verdicts = agent.VerifyAllCheckpoints(progress);
    if (!verdicts.ok()) return ErrorJson(verdicts.status());
    json list = json::array();
    json damaged = json::array();
    for (const auto& v : *verdicts) {
      list.push_back({{"id", v.id}, {"session", v.session}, {"intact", v.status.ok()}, {"error", v.status.message()}});
      if (!v.status.ok()) damaged.push_back(v.id);
    }
    return Ok({{"checkpoints", std::move(list)}, {"damaged", std::move(damaged)}});
  }
  return ErrorJson(Status::Internal("op '" + o + "' passed parsing but has no handler"));
}

}  // namespace

Result<ApiRequest> ParseApiRequest(std::string_view line) {
  if (line.size() > kMaxRequestBytes) return Status::InvalidArgument("request longer than 1 MiB");
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Status::InvalidArgument("request is not a JSON object");
  ApiRequest req;
  JsonReader r(j, "request", StatusCode::kInvalidArgument);
  ELSA_RETURN_IF_ERROR(r.Required("op", &req.op).status());
  const std::string& o = req.op;
  if (o == "version" || o == "ps" || o == "checkpoints" || o == "gc") return req;
  if (o == "run") {
    ELSA_RETURN_IF_ERROR(r.Required("name", &req.name).status());
    ELSA_RETURN_IF_ERROR(r.Required("argv", &req.argv).status());
    ELSA_RETURN_IF_ERROR(r.Optional("env", &req.env).status());
    ELSA_RETURN_IF_ERROR(r.Optional("workdir", &req.workdir).status());
    return req;
  }
  if (o == "session" || o == "stop" || o == "checkpoint") {
    ELSA_RETURN_IF_ERROR(r.Required("name", &req.name).status());
    ELSA_RETURN_IF_ERROR(r.Optional("timeout_seconds", &req.timeout_seconds).status());
    ELSA_RETURN_IF_ERROR(r.Optional("leave_running", &req.leave_running).status());
    if (req.timeout_seconds < 0 || req.timeout_seconds > 3600)
      return Status::InvalidArgument("timeout_seconds must be between 0 and 3600");
    return req;
  }
  if (o == "migrate") {
    ELSA_RETURN_IF_ERROR(r.Required("name", &req.name).status());
    ELSA_RETURN_IF_ERROR(r.Required("to", &req.to).status());
    std::string mode(MigrationModeName(req.mode));
    ELSA_RETURN_IF_ERROR(r.Optional("mode", &mode).status());
    ELSA_ASSIGN_OR_RETURN(req.mode, ParseMigrationMode(mode));
    ELSA_RETURN_IF_ERROR(r.Optional("max_downtime_ms", &req.max_downtime_ms).status());
    ELSA_RETURN_IF_ERROR(r.Optional("freeze_gate", &req.freeze_gate).status());
    if (req.max_downtime_ms < 1 || req.max_downtime_ms > 600000)
      return Status::InvalidArgument("max_downtime_ms must be between 1 and 600000");
    return req;
  }
  if (o == "verify") {  // without a checkpoint: every one
    ELSA_RETURN_IF_ERROR(r.Optional("checkpoint", &req.checkpoint).status());
    if (req.checkpoint.empty() && j.contains("checkpoint") && !j["checkpoint"].is_null())
      return Status::InvalidArgument("verify: 'checkpoint' is empty; leave it out to verify every checkpoint");
    return req;
  }
  if (o == "restore" || o == "rm") {
    ELSA_RETURN_IF_ERROR(r.Required("checkpoint", &req.checkpoint).status());
    ELSA_RETURN_IF_ERROR(r.Optional("name", &req.name).status());
    ELSA_RETURN_IF_ERROR(r.Optional("lazy", &req.lazy).status());
    return req;
  }
  return Status::InvalidArgument("unknown op '" + o + "'");
}

json HandleRequest(Agent& agent, const std::string& request_line, const EventFn& emit, const ReadLineFn& read_line) {
  auto req = ParseApiRequest(request_line);
  if (!req.ok()) return ErrorJson(req.status());
  try {
    return ExecuteRequest(agent, *req, emit, read_line);
  } catch (const std::exception& e) {
    return ErrorJson(Status::Internal(std::string("unexpected error: ") + e.what()));
  }
}

ApiServer::ApiServer(Agent& agent, std::string socket_path)
    : agent_(agent), socket_path_(std::move(socket_path)) {}

ApiServer::~ApiServer() {
  if (listen_fd_) ::unlink(socket_path_.c_str());
}

Status ApiServer::Listen() {
  sockaddr_un addr{};
  if (socket_path_.size() >= sizeof addr.sun_path) return Status::InvalidArgument("socket path too long: " + socket_path_);
  const std::string dir = std::filesystem::path(socket_path_).parent_path();
  // A directory of our own is made root-only; one that exists (/tmp, /run) is left as it is:
  // the socket's own mode (0600) and the peer's uid keep others out.
  std::error_code exists_ec;
  if (!std::filesystem::exists(dir, exists_ec)) ELSA_RETURN_IF_ERROR(MakeDirs(dir, 0700));
  // Another live agent on this socket? Then refuse rather than steal it.
  auto probe = CallAgent(socket_path_, {{"op", "version"}});
  if (probe.ok()) return Status::AlreadyExists("an Elsa agent already serves " + socket_path_);
  ::unlink(socket_path_.c_str());

  listen_fd_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listen_fd_) return Status::FromErrno("socket", errno);
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_path_.c_str());
  mode_t old = ::umask(0177);
  int rc = ::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (rc != 0) return Status::FromErrno("bind " + socket_path_, errno);
  if (::chmod(socket_path_.c_str(), 0600) != 0) return Status::FromErrno("chmod " + socket_path_, errno);
  if (::listen(listen_fd_.get(), 64) != 0) return Status::FromErrno("listen", errno);
  return Status::Ok();
}

void ApiServer::Serve(const std::atomic<bool>& stop) {
  AcceptClients(listen_fd_.get(), stop, kMaxUnixClients, [this](UniqueFd fd) {
    SocketConnection client(std::move(fd), kMaxRequestBytes);
    struct ucred cred {};
    socklen_t len = sizeof cred;
    if (::getsockopt(client.fd(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != 0) {
      (void)client.WriteLine(DumpJson(ErrorJson(Status::FailedPrecondition("the Elsa agent serves root only"))));
      return;
    }
    ServeApiConnection(agent_, client, /*gate=*/{});  // root on the host: every op
  });
}

}  // namespace elsa
