// What a migration's steps need from the agent they run in, and nothing more. The migrate
// library does not link the agent (its tests link it alone), so this interface is all of the
// agent a migration can touch; Agent implements it. The guards below hold what a step took
// (a running session, a name) and give it back on every way out.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "elsa/engine/agent.h"
#include "elsa/engine/criu_driver.h"
#include "elsa/engine/progress.h"
#include "elsa/engine/session.h"
#include "elsa/status.h"
#include "migrate/protocol.h"

namespace elsa {

class CheckpointPages;
class LazyPageSupply;

class MigrationHost {
 public:
  virtual ~MigrationHost() = default;

  virtual const AgentConfig& config() const = 0;
  virtual const Logger& log() const = 0;
  virtual Result<CriuDriver> Criu() const = 0;
  virtual CheckpointStore& store() = 0;
  virtual CheckpointPages& pages() = 0;

  // The source's side.
  // Marks the running session busy (no checkpoint, stop or second migration meanwhile).
  virtual Result<SessionInfo> ClaimRunning(const std::string& name, uint64_t* serial) = 0;
  virtual void Unclaim(uint64_t serial) = 0;
  // The tree ended (migrated away): forget the session once it is reaped.
  virtual void ForgetAfterExit(uint64_t serial, int timeout_s) = 0;
  // CRIU's dump, one at a time on this host.
  virtual Result<CriuOutcome> SerializedDump(const CriuDriver& criu, const CriuDumpRequest& request,
                                             const ProgressFn& progress, const CriuNotifyFn& on_event) = 0;
  virtual Manifest ManifestFor(const SessionInfo& info, const std::string& criu_version) const = 0;

  // The destination's side.
  // Holds `name` for a session arriving here; AlreadyExists if it runs or arrives already.
  virtual Status ReserveName(const std::string& name) = 0;
  virtual void ReleaseName(const std::string& name) = 0;
  // Restore() under a name the caller has reserved (and keeps until the session is adopted).
  virtual Result<RestoreReport> RestoreReserved(const std::string& checkpoint_id, const RestoreOptions& options,
                                                const ProgressFn& progress) = 0;
  // Restores images with CRIU and adopts the tree as session `info.name` (see Agent).
  // `on_monitor` learns the pid of the monitor running the restore (CRIU and the tree are its
  // children) as soon as it runs.
  virtual Result<SessionInfo> RestoreAndAdopt(SessionInfo info, const std::vector<std::string>& output_pipes,
                                              const std::string& images_dir, const std::string& staging,
                                              std::unique_ptr<LazyPageSupply> supply, CriuOutcome* outcome,
                                              std::function<void(pid_t monitor)> on_monitor) = 0;
  virtual Status Stop(const std::string& name, int timeout_s) = 0;
  // An incoming migration of `name` is under way here (its destination half runs) or over.
  virtual void MarkIncoming(const std::string& name, bool under_way) = 0;
  // What this host says to a source asking where `name` runs (peer::Resolve).
  virtual peer::Outcome IncomingOutcome(const std::string& name) = 0;
  // The arriving session `name` becomes this host's for good, before the source hears so
  // (`committed`), after which the source ends its copy: no longer marked arriving, and its lease
  // settled, so that it outlives this agent. A lazily restored session needs the agent until it
  // has paged in: waited for, up to `timeout`. An error (it stays marked arriving) if it does not
  // run here or cannot stand alone in that time: then it must not be said to be kept.
  virtual Status SettleIncoming(const std::string& name, std::chrono::milliseconds timeout) = 0;

  // A migration whose outcome the source cannot learn yet keeps asking on a thread of the
  // agent's; `stop` is set when the agent shuts down.
  virtual void ResolveLater(std::function<void(const std::atomic<bool>& stop)> work) = 0;
};

// A running session claimed for a migration: unclaimed when this ends, unless the session left
// for good (Forget).
class SessionClaim {
 public:
  static Result<SessionClaim> Take(MigrationHost& host, const std::string& name) {
    SessionClaim claim(host);
    ELSA_ASSIGN_OR_RETURN(claim.info_, host.ClaimRunning(name, &claim.serial_));
    claim.held_ = true;
    return claim;
  }
  SessionClaim(SessionClaim&& other) noexcept
      : host_(other.host_), info_(std::move(other.info_)), serial_(other.serial_), held_(other.held_) {
    other.held_ = false;
  }
  SessionClaim& operator=(SessionClaim&&) = delete;
  ~SessionClaim() {
    if (held_) host_->Unclaim(serial_);
  }
  const SessionInfo& info() const { return info_; }
  // The session's tree has ended here (it runs elsewhere now).
  void Forget(int timeout_s) {
    if (!held_) return;
    held_ = false;
    host_->ForgetAfterExit(serial_, timeout_s);
  }

 private:
  explicit SessionClaim(MigrationHost& host) : host_(&host) {}
  MigrationHost* host_;
  SessionInfo info_;
  uint64_t serial_ = 0;
  bool held_ = false;
};

// A session name held for an arriving session: released when this ends, which the destination
// lets happen only once the session is adopted under it (so the name is never free between).
class NameReservation {
 public:
  static Result<NameReservation> Take(MigrationHost& host, const std::string& name) {
    ELSA_RETURN_IF_ERROR(host.ReserveName(name));
    return NameReservation(host, name);
  }
  NameReservation(NameReservation&& other) noexcept : host_(other.host_), name_(std::move(other.name_)) {
    other.name_.clear();
  }
  NameReservation& operator=(NameReservation&&) = delete;
  ~NameReservation() { Release(); }
  const std::string& name() const { return name_; }
  void Release() {
    if (!name_.empty()) host_->ReleaseName(name_);
    name_.clear();
  }

 private:
  NameReservation(MigrationHost& host, std::string name) : host_(&host), name_(std::move(name)) {}
  MigrationHost* host_;
  std::string name_;
};

}  // namespace elsa
