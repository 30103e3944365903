#include "migrate/frozen_copy.h"

#include "session/session_monitor.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "elsa/engine/criu_driver.h"
#include "elsa/file_util.h"
#include "elsa/json_reader.h"
#include "migrate/peer_reader.h"
#include "migrate/stopped_tree.h"
#include "session/tree_memory.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr std::string_view kPrefix = "frozen-";
constexpr std::string_view kSuffix = ".json";

bool Stopped(pid_t pid) {
  Result<std::string> stat = ReadFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return false;
  const size_t close = stat->rfind(')');
  return close != std::string::npos && close + 2 < stat->size() && (*stat)[close + 2] == 'T';
}

}  // namespace

std::string FrozenCopyPath(const std::string& state_dir, const std::string& session) {
  return state_dir + "/run/" + std::string(kPrefix) + session + std::string(kSuffix);
}

Status RecordFrozenCopy(const std::string& state_dir, const FrozenCopy& copy) {
  json j = {{"session", copy.session}, {"pid", copy.pid},   {"start_ticks", copy.start_ticks},
            {"lock_table", copy.lock_table}, {"host", copy.host}, {"port", copy.port},
            {"dump_dir", copy.dump_dir}, {"commit_sent", copy.commit_sent}};
  return WriteFileAtomic(FrozenCopyPath(state_dir, copy.session), DumpJson(j));
}

uint64_t ProcessStartTicks(pid_t pid) {
  Result<ProcessIdentity> process = IdentifyProcess(pid);
  return process.ok() ? process->start_ticks : 0;
}

std::vector<FrozenCopy> ReadFrozenCopies(const std::string& state_dir, const Logger& log) {
  std::vector<FrozenCopy> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir + "/run", ec)) {
    const std::string file = entry.path().filename();
    if (file.rfind(kPrefix, 0) != 0 || file.size() <= kPrefix.size() + kSuffix.size() ||
        file.compare(file.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0)
      continue;
    Result<std::string> text = ReadFile(entry.path(), 64 << 10);
    json j = text.ok() ? json::parse(*text, nullptr, false) : json();
    FrozenCopy copy;
    JsonReader r(j, entry.path().string(), StatusCode::kCorruption);
    r.Required("session", &copy.session)
        .Required("pid", &copy.pid)
        .Required("start_ticks", &copy.start_ticks)
        .Required("lock_table", &copy.lock_table)
        .Required("host", &copy.host)
        .Required("port", &copy.port)
        .Optional("dump_dir", &copy.dump_dir)
        .Optional("commit_sent", &copy.commit_sent);
    Status st = text.ok() ? r.status() : text.status();
    if (st.ok()) st = ValidateIdentifier("session name", copy.session);
    if (!st.ok() || copy.pid <= 0) {
      log.Error("a frozen migration's record is unreadable, left as it is: " + (st.ok() ? "no pid" : st.ToString()));
      continue;
    }
    found.push_back(std::move(copy));
  }
  return found;
}

Result<peer::Outcome> AskWhereSessionRuns(const AgentConfig& config, const std::pair<std::string, uint16_t>& destination,
                                          const std::string& session, bool commit_sent) {
  ELSA_ASSIGN_OR_RETURN(transport::Backend backend, transport::ParseBackend(config.peer_backend));
  ELSA_ASSIGN_OR_RETURN(auto transport, transport::MakeTransport(backend));
  transport::ChannelOptions options = config.PeerChannelOptions();
  options.streams = 1;
  auto channel = transport->Connect({destination.first, destination.second}, options);
  if (!channel.ok()) {
    if (!commit_sent && channel.status().message().find(std::strerror(ECONNREFUSED)) != std::string::npos)
      return peer::Outcome::kAbsent;
    return channel.status();
  }
  ELSA_RETURN_IF_ERROR((*channel)->Send(peer::EncodeControl(peer::Resolve{session}), 0));
  ELSA_ASSIGN_OR_RETURN(peer::Resolution answer,
                        peer::Expect<peer::Resolution>(ReceiveControl(**channel, 10s), "to a resolve"));
  (void)(*channel)->Close(2s);
  return answer.outcome;
}

std::optional<bool> AskUntilKnown(const AgentConfig& config, const std::pair<std::string, uint16_t>& destination,
                                  const std::string& session, bool commit_sent, const std::atomic<bool>& stop) {
  while (!stop) {
    Result<peer::Outcome> outcome = AskWhereSessionRuns(config, destination, session, commit_sent);
    if (outcome.ok() && *outcome != peer::Outcome::kUndecided) return *outcome == peer::Outcome::kKept;
    for (int i = 0; i < 50 && !stop; ++i) std::this_thread::sleep_for(100ms);
  }
  return std::nullopt;
}

void SettleFrozenCopies(const AgentConfig& config,
                        const std::function<void(std::function<void(const std::atomic<bool>&)>)>& start) {
  for (FrozenCopy copy : ReadFrozenCopies(config.state_dir, config.log)) {
    const std::string record = FrozenCopyPath(config.state_dir, copy.session);
    Logger log = config.log.With("session", copy.session).With("op", "migrate");
    if (ProcessStartTicks(copy.pid) != copy.start_ticks || !Stopped(copy.pid)) {
      log.Info("a migration's record names a tree that is gone or running: removed");
      (void)::unlink(record.c_str());
      continue;
    }
    if (copy.host.empty()) {
      // A checkpoint's: its agent died before the checkpoint committed, so there is none (the
      // store drops the unfinished one) and the session runs on, as after any failed checkpoint.
      // CRIU's lock table is named in the dump's log, in the unfinished checkpoint's directory
      // (the agent settles these before its store drops that directory).
      StoppedTree tree(log, record);
      tree.Take(copy.pid, copy.lock_table.empty() ? CriuNetworkLockTableOf(copy.dump_dir) : copy.lock_table);
      if (Status resumed = tree.Resume(); !resumed.ok())
        log.Error("resuming the session a checkpoint left stopped: " + resumed.ToString());
      else
        log.Warning("its checkpoint was not finished when the last agent stopped: discarded; the session runs on");
      continue;
    }
    if (copy.lock_table.empty()) copy.lock_table = CriuNetworkLockTableOf(config.state_dir + "/run/migrate-" + copy.session);
    log.Warning("a migration to " + copy.host + " left this session frozen here (pid " + std::to_string(copy.pid) +
                ") when its agent stopped: asking " + copy.host + " where it runs");
    start([config, copy, record, log](const std::atomic<bool>& stop) {
      std::optional<bool> there = AskUntilKnown(config, {copy.host, copy.port}, copy.session, copy.commit_sent, stop);
      if (!there) return;  // this agent stops too: the record stays for the next
      // The same tree still? Between the question and now it could only have been killed.
      if (ProcessStartTicks(copy.pid) != copy.start_ticks) return (void)::unlink(record.c_str());
      StoppedTree tree(log, record);
      tree.Take(copy.pid, copy.lock_table);
      if (*there) {
        log.Info(copy.host + " runs the session: the frozen copy here ends");
        tree.End();
      } else if (Status resumed = tree.Resume(); !resumed.ok()) {
        log.Error(copy.host + " has no copy of the session, and resuming it here failed: " + resumed.ToString());
      } else {
        log.Warning(copy.host + " has no copy of the session: it runs here again (pid " + std::to_string(copy.pid) +
                    "); this agent adopted it from its record and lists it");
      }
    });
  }
}

}  // namespace elsa
