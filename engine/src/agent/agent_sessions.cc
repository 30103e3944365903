// The agent's sessions: started under their monitors, adopted from their records, stopped,
// claimed for long operations, forgotten.
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include "agent/agent_session.h"
#include "agent/session_record.h"
#include "elsa/engine/agent.h"
#include "elsa/engine/manifest.h"
#include "elsa/engine/session_process.h"
#include "elsa/file_util.h"
#include "elsa/stopwatch.h"

namespace elsa {

std::string Agent::LogPathFor(const std::string& name) const {
  return config_.state_dir + "/sessions/" + name + ".log";
}

Agent::Session* Agent::FindLocked(const std::string& name) {
  auto it = sessions_.find(name);
  return it == sessions_.end() ? nullptr : it->second.get();
}

SessionInfo Agent::Describe(const Session& s) const {
  SessionInfo info = s.info;
  if (info.state == SessionState::kRunning) {
    info.uptime_seconds = SecondsSince(s.started);
    TreeStats stats = ProcessTreeStats(info.pid);
    info.processes = stats.processes;
    info.rss_bytes = stats.rss_bytes;
  }
  return info;
}

Result<SessionInfo> Agent::AdoptLocked(SessionInfo info, StartedMonitor started, std::unique_ptr<Session>* replaced) {
  auto session = std::make_unique<Session>();
  session->serial = next_serial_++;
  const uint64_t serial = session->serial;
  info.state = SessionState::kRunning;
  info.log_path = LogPathFor(info.name);
  info.pid = started.session.pid;
  session->info = info;
  session->root = started.session;
  session->monitor = started.monitor;
  // An adopted session's uptime goes on from its process's start, not from its adoption.
  session->started = Clock::now() - std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(started.session.AgeSeconds()));
  session->lease = std::move(started.lease);
  auto watch = MonitorWatch::Start(started.monitor, started.session, SessionExitPath(config_.state_dir, info.name),
                                   [this, serial](const SessionExit& exit) { OnExit(serial, exit); });
  if (Status recorded = RecordLocked(*session); !recorded.ok() || !watch.ok()) {
    ::kill(info.pid, SIGKILL);  // unwatched, or unknown to the next agent: a stray tree
    return recorded.ok() ? watch.status() : recorded;
  }
  session->watch = std::move(*watch);
  SettleIfIndependentLocked(*session);
  auto it = sessions_.find(info.name);
  if (it != sessions_.end()) {
    *replaced = std::move(it->second);
    it->second = std::move(session);
  } else {
    sessions_.emplace(info.name, std::move(session));
  }
  return info;
}

void Agent::SettleIfIndependentLocked(Session& session) {
  if (session.lease && !session.info.paging_in && !incoming_.count(session.info.name)) SettleLease(session.lease);
}

Status Agent::RecordLocked(const Session& session) const {
  return WriteSessionRecord(config_.state_dir, {session.info, session.root, session.monitor})
      .WithContext("recording session '" + session.info.name + "' for the next agent");
}

void Agent::ForgetLocked(const std::string& name) { RemoveSessionRecord(config_.state_dir, name); }

Result<std::string> Agent::MonitorBinary() const {
  if (!config_.monitor_binary.empty()) return config_.monitor_binary;
  char self[4096];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return Status::FromErrno("readlink /proc/self/exe", errno);
  std::string path(self, static_cast<size_t>(n));
  path = path.substr(0, path.rfind('/') + 1) + "elsa-monitor";
  if (::access(path.c_str(), X_OK) != 0)
    return Status::FailedPrecondition("elsa-monitor is not next to this program (" + path +
                                      "): install it beside elsad (it runs each session)");
  return path;
}

void Agent::AdoptSurvivors() {
  for (SessionRecord& record : ReadSessionRecords(config_.state_dir, config_.log)) {
    const std::string name = record.info.name;
    Logger log = config_.log.With("session", name).With("op", "adopt");
    const bool root_alive = record.root.Alive();
    auto exit = ReadSessionExit(SessionExitPath(config_.state_dir, name));
    if (!root_alive && !(exit.ok() && exit->has_value())) {
      log.Warning("was left by the previous agent, and is gone without an exit status; forgotten");
      ForgetLocked(name);
      continue;
    }
    std::unique_ptr<Session> replaced;
    std::lock_guard lock(mu_);
    auto adopted = AdoptLocked(record.info, StartedMonitor{record.monitor, record.root, UniqueFd()}, &replaced);
    if (!adopted.ok()) {
      log.Error("cannot adopt it: " + adopted.status().message());
      continue;
    }
    if (root_alive)
      log.Info("adopted (pid " + std::to_string(record.root.pid) + ", left running by the previous agent" +
               (record.monitor.Alive() ? ")" : "; its monitor is gone, so its output is no longer captured)"));
  }
}

Result<SessionInfo> Agent::Run(const RunRequest& request) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", request.name));
  if (request.argv.empty()) return Status::InvalidArgument("no command given: elsa run --name NAME -- CMD ARGS...");
  std::unique_ptr<Session> replaced;
  Result<SessionInfo> result = Status::Internal("unreachable");
  {
    std::lock_guard lock(mu_);
    if (Session* s = FindLocked(request.name); (s && s->info.state == SessionState::kRunning) || reserved_names_.count(request.name))
      return Status::AlreadyExists("a session named '" + request.name + "' is already running");
    ELSA_ASSIGN_OR_RETURN(std::string monitor_binary, MonitorBinary());
    SpawnSpec spec{request.argv, request.env, request.workdir.empty() ? "/" : request.workdir};
    ForgetLocked(request.name);  // an earlier session's exit status is not this one's
    ELSA_ASSIGN_OR_RETURN(StartedMonitor started,
                          StartMonitoredSession(monitor_binary, spec,
                                                {LogPathFor(request.name), SessionExitPath(config_.state_dir, request.name)}));
    SessionInfo info;
    info.name = request.name;
    info.command = request.argv;
    info.workdir = spec.workdir;
    info.started_at = NowIso8601();
    result = AdoptLocked(std::move(info), std::move(started), &replaced);
  }
  return result;
}

std::vector<SessionInfo> Agent::Sessions() {
  std::lock_guard lock(mu_);
  std::vector<SessionInfo> out;
  for (const auto& [name, s] : sessions_) out.push_back(Describe(*s));
  return out;
}

Result<SessionInfo> Agent::GetSession(const std::string& name) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  std::lock_guard lock(mu_);
  Session* s = FindLocked(name);
  if (!s) return Status::NotFound("no session named '" + name + "' (`elsa ps` lists sessions)");
  return Describe(*s);
}

void Agent::OnExit(uint64_t serial, const SessionExit& exit) {
  std::lock_guard lock(mu_);
  for (auto& [name, s] : sessions_) {
    if (s->serial != serial) continue;
    s->reaped = true;
    s->info.exit_code = exit.exit_code;
    s->info.exit_signal = exit.signal;
    s->info.exit_note = exit.note;
    if (s->info.state == SessionState::kRunning) {
      s->info.state = SessionState::kExited;
      config_.log.With("session", name)
          .Info("exited (pid " + std::to_string(s->info.pid) + ", " + (exit.signal ? "signal " : "code ") +
                std::to_string(exit.signal ? exit.signal : exit.exit_code) + ")" +
                (exit.note.empty() ? "" : ": " + exit.note));
    }
  }
  exited_cv_.notify_all();
}

bool Agent::WaitForExit(std::unique_lock<std::mutex>& lock, uint64_t serial, int timeout_s) {
  return exited_cv_.wait_for(lock, std::chrono::seconds(timeout_s), [&] {
    for (const auto& [name, s] : sessions_)
      if (s->serial == serial) return s->reaped;
    return true;  // forgotten meanwhile
  });
}

Status Agent::Stop(const std::string& name, int timeout_s) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  std::unique_ptr<Session> forgotten;
  {
    std::unique_lock lock(mu_);
    Session* s = FindLocked(name);
    if (!s) return Status::NotFound("no session named '" + name + "' (`elsa ps` lists sessions)");
    if (s->busy) return Status::FailedPrecondition("session '" + name + "' is being checkpointed; try again when it is done");
    const uint64_t serial = s->serial;
    const pid_t pid = s->info.pid;
    if (!s->reaped) {
      // Signals to a PID-namespace init only land if it handles them; SIGKILL always does.
      ::kill(pid, SIGTERM);
      if (!WaitForExit(lock, serial, timeout_s)) {
        ::kill(pid, SIGKILL);
        if (!WaitForExit(lock, serial, 10))
          return Status::Timeout("session '" + name + "' (pid " + std::to_string(pid) + ") did not exit after SIGKILL");
      }
    }
    auto it = sessions_.find(name);
    if (it != sessions_.end() && it->second->serial == serial) {
      forgotten = std::move(it->second);
      sessions_.erase(it);
      ForgetLocked(name);
    }
  }
  return Status::Ok();
}

Result<std::pair<SessionInfo, uint64_t>> Agent::ClaimRunning(const std::string& name) {
  std::lock_guard lock(mu_);
  Session* s = FindLocked(name);
  if (!s) return Status::NotFound("no session named '" + name + "' (`elsa ps` lists sessions)");
  if (s->info.state != SessionState::kRunning)
    return Status::FailedPrecondition("session '" + name + "' is " + std::string(SessionStateName(s->info.state)) +
                                      ", not running");
  if (s->busy) return Status::FailedPrecondition("session '" + name + "' is busy (a checkpoint or migration)");
  s->busy = true;
  return std::make_pair(s->info, s->serial);
}

Status Agent::ReserveName(const std::string& name) {
  std::lock_guard lock(mu_);
  Session* s = FindLocked(name);
  if (s && s->info.state == SessionState::kRunning)
    return Status::AlreadyExists("a session named '" + name + "' is running on this host");
  if (reserved_names_.count(name))
    return Status::AlreadyExists("a session named '" + name + "' is arriving on this host right now (a restore, or "
                                 "an incoming migration: one whose source went silent ends within --peer-timeout)");
  reserved_names_.insert(name);
  return Status::Ok();
}

void Agent::ReleaseName(const std::string& name) {
  std::lock_guard lock(mu_);
  reserved_names_.erase(name);
}

void Agent::ClearBusy(uint64_t serial) {
  std::lock_guard lock(mu_);
  for (auto& [n, s] : sessions_)
    if (s->serial == serial) s->busy = false;
}

void Agent::ForgetAfterExit(uint64_t serial, int timeout_s) {
  std::unique_ptr<Session> forgotten;  // destroyed outside the lock: its supervisor takes it
  std::unique_lock lock(mu_);
  if (!WaitForExit(lock, serial, timeout_s)) config_.log.Warning("a migrated tree was not reaped in time");
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
    if (it->second->serial == serial) {
      forgotten = std::move(it->second);
      ForgetLocked(it->first);
      sessions_.erase(it);
      break;
    }
  lock.unlock();
}

}  // namespace elsa
