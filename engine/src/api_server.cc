#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <list>
#include <memory>
#include <thread>

#include "elsa/engine/api.h"
#include "elsa/file_util.h"

namespace elsa {

using nlohmann::json;

namespace {

// Typed access to request fields: a wrong type is the client's error, not a crash.
template <typename T>
Result<T> Field(const json& req, const char* key, T fallback, bool required = false) {
  auto it = req.find(key);
  if (it == req.end() || it->is_null()) {
    if (required) return Status::InvalidArgument(std::string("request lacks '") + key + "'");
    return fallback;
  }
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    return Status::InvalidArgument(std::string("request field '") + key + "' has the wrong type");
  }
}

json Ok(json result) { return {{"ok", true}, {"result", std::move(result)}}; }

json Dispatch(Agent& agent, const json& req, const EventFn& emit) {
  auto progress = [&](const std::string& phase, const std::string& detail) {
    emit({{"event", "progress"}, {"phase", phase}, {"detail", detail}});
  };
  auto op = Field<std::string>(req, "op", "", true);
  if (!op.ok()) return ErrorJson(op.status());
  const std::string& o = *op;

  if (o == "version") {
    json j = {{"agent", "elsad"}, {"api", 1}, {"state_dir", agent.config().state_dir}};
    auto criu = agent.CriuBinary();
    j["criu"] = criu.ok() ? json(*criu) : json(nullptr);
    if (!criu.ok()) j["criu_problem"] = criu.status().message();
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
    RunRequest r;
    auto name = Field<std::string>(req, "name", "", true);
    auto argv = Field<std::vector<std::string>>(req, "argv", {}, true);
    auto env = Field<std::vector<std::string>>(req, "env", {});
    auto workdir = Field<std::string>(req, "workdir", "/");
    for (const Status* s : {&name.status(), &argv.status(), &env.status(), &workdir.status()})
      if (!s->ok()) return ErrorJson(*s);
    r.name = *name;
    r.argv = *argv;
    r.env = *env;
    r.workdir = *workdir;
    auto info = agent.Run(r);
    return info.ok() ? Ok(ToJson(*info)) : ErrorJson(info.status());
  }

  // The remaining ops take a session name or a checkpoint id.
  const bool by_checkpoint = o == "restore" || o == "rm" || o == "verify";
  auto target = Field<std::string>(req, by_checkpoint ? "checkpoint" : "name", "", true);
  if (!target.ok()) return ErrorJson(target.status());

  if (o == "session") {
    auto info = agent.GetSession(*target);
    return info.ok() ? Ok(ToJson(*info)) : ErrorJson(info.status());
  }
  if (o == "stop") {
    auto timeout = Field<int>(req, "timeout_seconds", 10);
    if (!timeout.ok()) return ErrorJson(timeout.status());
    Status s = agent.Stop(*target, *timeout);
    return s.ok() ? Ok({{"stopped", *target}}) : ErrorJson(s);
  }
  if (o == "checkpoint") {
    auto leave = Field<bool>(req, "leave_running", false);
    if (!leave.ok()) return ErrorJson(leave.status());
    auto report = agent.Checkpoint(*target, *leave, progress);
    return report.ok() ? Ok(ToJson(*report)) : ErrorJson(report.status());
  }
  if (o == "restore") {
    auto name = Field<std::string>(req, "name", "");
    if (!name.ok()) return ErrorJson(name.status());
    auto report = agent.Restore(*target, *name, progress);
    return report.ok() ? Ok(ToJson(*report)) : ErrorJson(report.status());
  }
  if (o == "rm") {
    Status s = agent.RemoveCheckpoint(*target);
    return s.ok() ? Ok({{"removed", *target}}) : ErrorJson(s);
  }
  if (o == "verify") {
    auto m = agent.VerifyCheckpoint(*target);
    return m.ok() ? Ok(ToJson(*m, true)) : ErrorJson(m.status());
  }
  return ErrorJson(Status::InvalidArgument("unknown op '" + o + "'"));
}

bool WriteLine(int fd, const json& j) {
  std::string line = j.dump() + "\n";
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    rest.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads one request line, bounded in size and time.
Result<std::string> ReadRequestLine(int fd) {
  std::string line;
  char buf[4096];
  while (line.find('\n') == std::string::npos) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, 30000);
    if (r == 0) return Status::Timeout("no request within 30 s");
    if (r < 0 && errno == EINTR) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::InvalidArgument("connection closed before a full request line");
    line.append(buf, static_cast<size_t>(n));
    if (line.size() > kMaxRequestBytes) return Status::InvalidArgument("request longer than 1 MiB");
  }
  line.resize(line.find('\n'));
  return line;
}

void ServeClient(Agent& agent, int fd) {
  UniqueFd client(fd);
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != 0) {
    WriteLine(fd, ErrorJson(Status::FailedPrecondition("the Elsa agent serves root only")));
    return;
  }
  auto line = ReadRequestLine(fd);
  if (!line.ok()) {
    WriteLine(fd, ErrorJson(line.status()));
    return;
  }
  json reply = HandleRequest(agent, *line, [fd](const json& event) { WriteLine(fd, event); });
  WriteLine(fd, reply);
}

}  // namespace

json HandleRequest(Agent& agent, const std::string& request_line, const EventFn& emit) {
  json req = json::parse(request_line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object())
    return ErrorJson(Status::InvalidArgument("request is not a JSON object"));
  try {
    return Dispatch(agent, req, emit);
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
  ELSA_RETURN_IF_ERROR(MakeDirs(dir, 0700));
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
  struct Client {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
  };
  std::list<Client> clients;
  while (!stop.load()) {
    clients.remove_if([](Client& c) {
      if (!c.done->load()) return false;
      c.thread.join();
      return true;
    });
    pollfd p{listen_fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, 200);
    if (r <= 0) continue;
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    Client& c = clients.emplace_back();
    c.thread = std::thread([this, fd, done = c.done] {
      ServeClient(agent_, fd);
      done->store(true);
    });
  }
  // Long operations (a dump) finish before the agent goes away.
  for (auto& c : clients) c.thread.join();
}

}  // namespace elsa
