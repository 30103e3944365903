#include "elsa/engine/agent.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <thread>

#include "elsa/engine/session_process.h"
#include "elsa/file_util.h"
#include "elsa/stopwatch.h"
#include "migrate/destination.h"
#include "migrate/frozen_copy.h"
#include "migrate/host.h"
#include "migrate/source.h"
#include "migrate/stopped_tree.h"
#include "agent/agent_metrics.h"
#include "agent/agent_session.h"
#include "agent/session_record.h"
#include "session/session_monitor.h"
#include "store/checkpoint_pages.h"

namespace elsa {

std::string_view SessionStateName(SessionState state) {
  switch (state) {
    case SessionState::kRunning: return "running";
    case SessionState::kCheckpointed: return "checkpointed";
    case SessionState::kExited: return "exited";
  }
  return "?";
}

// What a migration's steps may use of the agent (migrate/host.h), and nothing else.
class Agent::Host final : public MigrationHost {
 public:
  explicit Host(Agent& agent) : agent_(agent) {}

  const AgentConfig& config() const override { return agent_.config_; }
  const Logger& log() const override { return agent_.config_.log; }
  Result<CriuDriver> Criu() const override {
    ELSA_ASSIGN_OR_RETURN(std::string binary, agent_.CriuBinary());
    return CriuDriver(std::move(binary));
  }
  CheckpointStore& store() override { return agent_.store_; }
  CheckpointPages& pages() override { return *agent_.pages_; }

  Result<SessionInfo> ClaimRunning(const std::string& name, uint64_t* serial) override {
    ELSA_ASSIGN_OR_RETURN(auto claimed, agent_.ClaimRunning(name));
    *serial = claimed.second;
    return claimed.first;
  }
  void Unclaim(uint64_t serial) override { agent_.ClearBusy(serial); }
  void ForgetAfterExit(uint64_t serial, int timeout_s) override { agent_.ForgetAfterExit(serial, timeout_s); }
  Result<CriuOutcome> SerializedDump(const CriuDriver& criu, const CriuDumpRequest& request, const ProgressFn& progress,
                                     const CriuNotifyFn& on_event) override {
    return agent_.SerializedDump(criu, request, progress, on_event);
  }
  Manifest ManifestFor(const SessionInfo& info, const std::string& criu_version) const override {
    return Agent::ManifestFor(info, criu_version);
  }

  Status ReserveName(const std::string& name) override { return agent_.ReserveName(name); }
  void ReleaseName(const std::string& name) override { agent_.ReleaseName(name); }
  Result<RestoreReport> RestoreReserved(const std::string& checkpoint_id, const RestoreOptions& options,
                                        const ProgressFn& progress) override {
    ELSA_ASSIGN_OR_RETURN(Manifest manifest, agent_.store_.Load(checkpoint_id));
    const std::string name = options.name.empty() ? manifest.session_name : options.name;
    return agent_.RestoreReserved(checkpoint_id, name, manifest, options.lazy, progress);
  }
  Result<SessionInfo> RestoreAndAdopt(SessionInfo info, const std::vector<std::string>& output_pipes,
                                      const std::string& images_dir, const std::string& staging,
                                      std::unique_ptr<LazyPageSupply> supply, CriuOutcome* outcome,
                                      std::function<void(pid_t monitor)> on_monitor) override {
    return agent_.RestoreAndAdopt(std::move(info), output_pipes, images_dir, staging, std::move(supply), nullptr,
                                  outcome, on_monitor);
  }
  Status Stop(const std::string& name, int timeout_s) override { return agent_.Stop(name, timeout_s); }
  void MarkIncoming(const std::string& name, bool under_way) override;
  peer::Outcome IncomingOutcome(const std::string& name) override;
  Status SettleIncoming(const std::string& name, std::chrono::milliseconds timeout) override;
  void ResolveLater(std::function<void(const std::atomic<bool>& stop)> work) override {
    agent_.resolving_threads_.Start([&stop = agent_.stopping_, work = std::move(work)] { work(stop); });
  }

 private:
  Agent& agent_;
};

void Agent::Host::MarkIncoming(const std::string& name, bool under_way) {
  std::lock_guard lock(agent_.mu_);
  if (under_way)
    agent_.incoming_.insert(name);
  else if (auto at = agent_.incoming_.find(name); at != agent_.incoming_.end())
    agent_.incoming_.erase(at);
  // The migration is over: a session it left running here stands on its own from now on.
  if (Session* s = agent_.FindLocked(name); !under_way && s && s->info.state == SessionState::kRunning)
    agent_.SettleIfIndependentLocked(*s);
}

Status Agent::Host::SettleIncoming(const std::string& name, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    {
      std::lock_guard lock(agent_.mu_);
      Session* s = agent_.FindLocked(name);
      if (!s || s->info.state != SessionState::kRunning)
        return Status::FailedPrecondition("session '" + name + "' does not run here");
      if (!s->info.lazy_error.empty())
        return Status::ExternalFailure("session '" + name + "' could not page in: " + s->info.lazy_error);
      agent_.incoming_.erase(name);
      agent_.SettleIfIndependentLocked(*s);
      if (!s->lease) return Status::Ok();
      agent_.incoming_.insert(name);  // still paging in: the agent's to the end of it
    }
    if (Clock::now() >= deadline)
      return Status::Timeout("session '" + name + "' still pages in: it cannot outlive this agent yet");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

peer::Outcome Agent::Host::IncomingOutcome(const std::string& name) {
  std::lock_guard lock(agent_.mu_);
  if (agent_.incoming_.count(name)) return peer::Outcome::kUndecided;
  const Session* s = agent_.FindLocked(name);
  return s && s->info.state == SessionState::kRunning ? peer::Outcome::kKept : peer::Outcome::kAbsent;
}

Agent::Agent(AgentConfig config)
    : config_(std::move(config)),
      store_(config_.state_dir + "/checkpoints", config_.log),
      host_(std::make_unique<Host>(*this)),
      metrics_(std::make_unique<AgentMetrics>([this] { return MetricsGauges(); })) {}

Agent::~Agent() {
  // A migration still asking where its session runs leaves it frozen: two copies running would
  // be worse than one waiting (docs/architecture.md, "A failure after `restore`").
  stopping_ = true;
  resolving_threads_.JoinAll();
  // Lazily restored sessions get all their pages before the agent goes: cutting them off would
  // leave holes in their memory.
  paging_threads_.JoinAll();
  // Supervisors are stopped outside the lock: their exit callbacks take it.
  std::map<std::string, std::unique_ptr<Session>> sessions;
  {
    std::lock_guard lock(mu_);
    sessions.swap(sessions_);
  }
  sessions.clear();
}

Status Agent::Open() {
  ELSA_RETURN_IF_ERROR(MakeDirs(config_.state_dir, 0700));
  // One agent per state directory: a second one would take the first one's in-flight work for
  // leftovers of a crash and delete it. The lock goes with this process, however it ends.
  const std::string lock_path = config_.state_dir + "/elsad.lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) return Status::FromErrno("open " + lock_path, errno);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Status::FromErrno("lock " + lock_path, errno);
    Result<std::string> read = ReadFile(lock_path, 64);
    const std::string holder = read.ok() ? *read : std::string();
    return Status::AlreadyExists("another elsad" + (holder.empty() ? std::string() : " (pid " + holder + ")") +
                                 " uses the state directory " + config_.state_dir +
                                 ": stop it, or give this one its own --state-dir");
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(lock.get(), 0) != 0 || ::pwrite(lock.get(), pid.data(), pid.size(), 0) < 0)
    return Status::FromErrno("write " + lock_path, errno);
  state_lock_ = std::move(lock);
  ELSA_RETURN_IF_ERROR(MakeDirs(config_.state_dir + "/sessions", 0700));
  ELSA_RETURN_IF_ERROR(MakeDirs(config_.state_dir + "/run", 0700));
  // Sessions outlive their agent (each has its monitor): take over those the last one left.
  AdoptSurvivors();
  // Sessions a migration or a checkpoint left frozen when the previous agent died: settled with
  // their destination, or resumed; before the store drops unfinished checkpoints, whose CRIU
  // logs name the network locks to lift.
  SettleFrozenCopies(config_, [this](std::function<void(const std::atomic<bool>&)> work) {
    host_->ResolveLater(std::move(work));
  });
  ELSA_RETURN_IF_ERROR(store_.Open());
  ELSA_ASSIGN_OR_RETURN(pages_, CheckpointPages::Open(config_.state_dir + "/pages", config_.log));
  return Status::Ok();
}

Result<std::string> Agent::CriuBinary() const { return CriuDriver::Locate(config_.criu); }

AgentGauges Agent::MetricsGauges() {
  AgentGauges g;
  for (const SessionInfo& s : Sessions()) g.sessions[static_cast<size_t>(s.state)] += 1;
  if (Result<std::vector<Manifest>> all = store_.List(); all.ok()) {
    g.checkpoints = static_cast<double>(all->size());
    g.checkpoint_pages = 0;
    for (const Manifest& m : *all)
      if (m.pages_in_store) g.checkpoint_pages += static_cast<double>(m.pages);
  }
  if (pages_) {  // Open() made it
    const PageStoreReport stats = PageStoreStats();
    g.unique_pages = static_cast<double>(stats.unique_pages);
    g.stored_bytes = static_cast<double>(stats.stored_bytes);
  }
  return g;
}

std::string Agent::RenderMetrics() { return metrics_->Render(); }

Manifest Agent::ManifestFor(const SessionInfo& info, const std::string& criu_version) {
  Manifest manifest;
  manifest.created_at = NowIso8601();
  manifest.host = Hostname();
  manifest.kernel = KernelRelease();
  manifest.criu_version = criu_version;
  manifest.session_name = info.name;
  manifest.command = info.command;
  manifest.workdir = info.workdir;
  manifest.session_started_at = info.started_at;
  manifest.source_pid = info.pid;
  manifest.output_pipes = OutputPipeKeys(info.pid);
  return manifest;
}

Result<CriuOutcome> Agent::SerializedDump(const CriuDriver& criu, const CriuDumpRequest& request,
                                          const ProgressFn& progress, const CriuNotifyFn& on_event) {
  // One CRIU dump at a time: CRIU's parasite mounts /proc at `proc.crtools` in each dumped
  // task's working directory, so two dumps of tasks sharing a directory fail with EEXIST.
  std::lock_guard one_dump(dump_mu_);
  return criu.Dump(request, [&](const std::string& event) {
    Report(progress, "criu", event);
    if (on_event) on_event(event);
  });
}

Result<CheckpointReport> Agent::Checkpoint(const std::string& name, bool leave_running, const ProgressFn& progress) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  const auto start = Clock::now();
  ELSA_ASSIGN_OR_RETURN(auto claimed, ClaimRunning(name));
  const SessionInfo info = claimed.first;  // not a structured binding: lambdas below capture it
  const uint64_t serial = claimed.second;

  auto report = [&]() -> Result<CheckpointReport> {
    ELSA_ASSIGN_OR_RETURN(std::string criu_binary, CriuBinary());
    CriuDriver criu(criu_binary);
    ELSA_ASSIGN_OR_RETURN(std::string criu_version, criu.Version());
    std::string id = NewCheckpointId(name);
    ELSA_ASSIGN_OR_RETURN(PendingCheckpoint pending, store_.Begin(id));
    ELSA_ASSIGN_OR_RETURN(UniqueFd dir_fd, OpenDirectory(pending.dir()));
    // From the dump's first page until the manifest names them all, no collection may run.
    PagesPin pin = pages_->Pin();

    Manifest manifest = ManifestFor(info, criu_version);
    manifest.leave_running = leave_running;

    Report(progress, "dump", "freezing and dumping pid " + std::to_string(info.pid) + " with CRIU " + criu_version +
                                 ", pages into the page store");
    ELSA_ASSIGN_OR_RETURN(std::unique_ptr<PageIntake> intake, pages_->StartIntake(pending.dir()));
    CriuDumpRequest dump = intake->DumpRequest(info.pid, dir_fd.get());
    dump.leave_running = leave_running;
    // A checkpoint that ends the session leaves it stopped, not killed, until the checkpoint is
    // committed: a failure, or this agent dying, before then resumes it (the next agent does, from
    // the record), so no moment exists where neither the session nor its checkpoint is there.
    dump.leave_stopped = !leave_running;
    StoppedTree stopped(config_.log.With("session", name).With("op", "checkpoint"),
                        leave_running ? "" : FrozenCopyPath(config_.state_dir, name));
    if (!leave_running)
      ELSA_RETURN_IF_ERROR(
          RecordFrozenCopy(config_.state_dir, {name, info.pid, ProcessStartTicks(info.pid), "", "", 0, pending.dir()}));
    Result<CriuOutcome> dumped = SerializedDump(criu, dump, progress);
    if (!leave_running) {
      if (dumped.ok()) stopped.Take(info.pid, CriuNetworkLockTableOf(pending.dir()));
      else (void)::unlink(FrozenCopyPath(config_.state_dir, name).c_str());  // CRIU resumed it
    }
    Result<page_server::ReceiverStats> received = intake->Finish(dumped.ok());
    // Our intake failing on the disk (e.g. full) is what ended CRIU's dump: say so first.
    if (!dumped.ok() && !received.ok() && received.status().code() == StatusCode::kIoError)
      return Status(StatusCode::kIoError, "storing the dump's pages: " + received.status().message() +
                                              " (so CRIU's dump failed; the session runs on): " + dumped.status().message());
    if (!dumped.ok()) return dumped.status();
    if (!received.ok()) return received.status().WithContext("taking in the dump's pages");
    const CriuOutcome& outcome = *dumped;
    manifest.pages_in_store = true;
    manifest.pages = received->pages_present;
    manifest.pages_new = received->pages_new;
    ProgressEvent stored = ProgressEvent::Of("pages", std::to_string(received->pages_present) + " pages, " +
                                      std::to_string(received->pages_new) + " new to the store");
    stored.pages = received->pages_present;
    stored.bytes_done = received->pages_new * page_server::kPageSize;
    Report(progress, std::move(stored));
    CheckpointReport out;
    out.dump_seconds = outcome.seconds;
    out.criu_events = outcome.notifications;
    manifest.dump_seconds = outcome.seconds;
    if (!leave_running) manifest.network_lock_table = stopped.network_lock_table();

    Report(progress, "commit", "checksumming and syncing the images");
    if (config_.test_fault == "die-before-checkpoint-commit") ::raise(SIGKILL);  // as `kill -9` would, here
    const auto commit_start = Clock::now();
    ELSA_RETURN_IF_ERROR(pages_->Sync());
    ELSA_ASSIGN_OR_RETURN(out.manifest, pending.Commit(std::move(manifest), /*keep_on_failure=*/false));
    out.commit_seconds = SecondsSince(commit_start);
    if (!leave_running) {
      // Committed: the session lives in its checkpoint now. CRIU's lock on its connections stays
      // until the restore, so that its peers see nothing of the pause.
      stopped.EndKeepingNetworkLock();
      std::unique_lock lock(mu_);
      for (auto& [n, s] : sessions_)
        if (s->serial == serial) s->info.state = SessionState::kCheckpointed;
      if (!WaitForExit(lock, serial, 10))
        config_.log.With("session", name).Warning("not reaped 10 s after its checkpoint");
    }
    out.total_seconds = SecondsSince(start);
    {
      std::lock_guard lock(mu_);
      for (auto& [n, s] : sessions_)
        if (s->serial == serial) {
          s->info.last_checkpoint = out.manifest.id;
          if (Status recorded = RecordLocked(*s); !recorded.ok()) config_.log.With("session", n).Warning(recorded.message());
        }
    }
    return out;
  }();
  ClearBusy(serial);
  metrics_->CheckpointEnded(report);
  if (!report.ok()) return report.status().WithContext("checkpoint of session '" + name + "'");
  return report;
}

Result<RestoreReport> Agent::Restore(const std::string& checkpoint_id, const RestoreOptions& options,
                                     const ProgressFn& progress) {
  ELSA_ASSIGN_OR_RETURN(Manifest manifest, store_.Load(checkpoint_id));
  const std::string name = options.name.empty() ? manifest.session_name : options.name;
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  ELSA_ASSIGN_OR_RETURN(NameReservation reserved,
                        NameReservation::Take(*host_, name).WithContext("restore under another name with --name"));
  Result<RestoreReport> restored = RestoreReserved(checkpoint_id, name, manifest, options.lazy, progress);
  metrics_->RestoreEnded(options.lazy, restored.ok());
  return restored;
}

Result<RestoreReport> Agent::RestoreReserved(const std::string& checkpoint_id, const std::string& name,
                                             const Manifest& manifest, bool lazy, const ProgressFn& progress) {
  const auto start = Clock::now();
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  if (lazy && !manifest.pages_in_store)
    return Status::InvalidArgument("checkpoint " + checkpoint_id +
                                   " predates the page store (its pages are files); restore it without --lazy");
  auto report = [&]() -> Result<RestoreReport> {
    RestoreReport out;
    out.checkpoint_id = checkpoint_id;
    out.lazy = lazy;
    const std::string checkpoint_dir = store_.PathOf(checkpoint_id);
    ProgressEvent verifying = ProgressEvent::Of("verify", "checking " + std::to_string(manifest.files.size()) + " files (" +
                                          std::to_string(manifest.TotalBytes()) + " bytes) against the manifest");
    verifying.bytes_total = manifest.TotalBytes();
    Report(progress, std::move(verifying));
    const auto verify_start = Clock::now();
    ELSA_RETURN_IF_ERROR(store_.Verify(manifest));
    // An eager restore reads and checks every page as it writes the images; a lazy one checks
    // each page as it serves it, so here only that every page is there.
    if (manifest.pages_in_store && lazy) ELSA_RETURN_IF_ERROR(pages_->VerifyPages(checkpoint_dir, false));
    out.verify_seconds = SecondsSince(verify_start);

    ELSA_ASSIGN_OR_RETURN(std::string criu_binary, CriuBinary());
    CriuDriver criu(criu_binary);
    // CRIU reads the images from, and writes its log into, a scratch directory: the checkpoint
    // stays pristine. Store-backed checkpoints have their pages images built there.
    const std::string staging = config_.state_dir + "/run/restore-" + name;
    ELSA_ASSIGN_OR_RETURN(ScopedPath cleanup, ScopedPath::MakeDirectory(staging));
    std::string images_dir = checkpoint_dir;
    if (manifest.pages_in_store) {
      ProgressEvent writing = ProgressEvent::Of("pages", lazy ? "writing the pages CRIU needs first; the rest will be served lazily"
                                          : "writing " + std::to_string(manifest.pages) + " pages from the store");
      writing.pages = manifest.pages;
      Report(progress, std::move(writing));
      const auto materialize_start = Clock::now();
      ELSA_ASSIGN_OR_RETURN(page_server::MaterializeStats made,
                            pages_->Materialize(checkpoint_dir, staging, lazy));
      out.materialize_seconds = SecondsSince(materialize_start);
      out.pages_materialized = made.pages_written;
      out.pages_lazy = made.pages_lazy;
      images_dir = staging;
    }
    std::unique_ptr<LazyPageSupply> supply;
    if (lazy) {
      Report(progress, "lazy", "starting criu lazy-pages and our lazy page server for " +
                                   std::to_string(out.pages_lazy) + " pages");
      ELSA_ASSIGN_OR_RETURN(supply, pages_->StartLazySupply(criu, checkpoint_dir, staging));
      cleanup.Keep();  // the staging directory is the lazy daemon's until it is done
    }
    SessionInfo info;
    info.name = name;
    info.command = manifest.command;
    info.workdir = manifest.workdir;
    info.started_at = manifest.session_started_at;
    info.restored_from = checkpoint_id;
    info.last_checkpoint = checkpoint_id;
    Report(progress, "restore", "restoring with CRIU from " + checkpoint_dir + (lazy ? " (lazily)" : ""));
    CriuOutcome outcome;
    ELSA_ASSIGN_OR_RETURN(out.session, RestoreAndAdopt(std::move(info), manifest.output_pipes, images_dir, staging,
                                                       std::move(supply), progress, &outcome));
    out.restore_seconds = outcome.seconds;
    out.criu_events = outcome.notifications;
    out.total_seconds = SecondsSince(start);
    return out;
  }();
  if (!report.ok()) return report.status().WithContext("restore of " + checkpoint_id);
  return report;
}

Result<SessionInfo> Agent::RestoreAndAdopt(SessionInfo info, const std::vector<std::string>& output_pipes,
                                           const std::string& images_dir, const std::string& staging,
                                           std::unique_ptr<LazyPageSupply> supply, const ProgressFn& progress,
                                           CriuOutcome* outcome, const std::function<void(pid_t monitor)>& on_monitor) {
  ELSA_ASSIGN_OR_RETURN(std::string criu_binary, CriuBinary());
  CriuDriver criu(criu_binary);
  auto remove_staging = [&] {
    if (supply) (void)RemoveTree(staging);  // the supply's daemon worked there; nobody else will
  };
  std::unique_ptr<Session> replaced;  // an exited session of the same name, destroyed unlocked
  auto restored = [&]() -> Result<SessionInfo> {
    ELSA_ASSIGN_OR_RETURN(std::string monitor_binary, MonitorBinary());
    ELSA_ASSIGN_OR_RETURN(UniqueFd images_fd, OpenDirectory(images_dir));
    ELSA_ASSIGN_OR_RETURN(UniqueFd work_fd, OpenDirectory(staging));
    ELSA_ASSIGN_OR_RETURN(OutputPipe pipe, OutputPipe::Create());
    {
      std::lock_guard lock(mu_);
      ForgetLocked(info.name);  // an earlier session's exit status is not this one's
    }
    // The monitor runs CRIU, so the tree CRIU restores (as its sibling) is the monitor's child.
    RestoreMonitor monitor(monitor_binary, {LogPathFor(info.name), SessionExitPath(config_.state_dir, info.name)},
                           std::move(pipe.read_end));
    CriuRestoreRequest request{images_fd.get(), work_fd.get(), {}, supply != nullptr, {}};
    for (const auto& key : output_pipes) request.inherit_fds.emplace_back(key, pipe.write_end.get());
    request.launcher = [&](const std::vector<std::string>& argv, const std::vector<int>& pass_fds) {
      auto launched = monitor.Launch(argv, pass_fds);
      if (launched.ok() && on_monitor) on_monitor(monitor.pid());
      return launched;
    };
    ELSA_ASSIGN_OR_RETURN(*outcome, criu.Restore(request, [&](const std::string& event) { Report(progress, "criu", event); }));
    pipe.write_end.Reset();
    ELSA_ASSIGN_OR_RETURN(StartedMonitor started, monitor.Adopt(outcome->restored_pid));
    info.paging_in = supply != nullptr;
    std::lock_guard lock(mu_);
    ELSA_ASSIGN_OR_RETURN(SessionInfo adopted, AdoptLocked(std::move(info), std::move(started), &replaced));
    if (supply) FinishPagingIn(sessions_.at(adopted.name)->serial, std::move(supply), staging);
    return adopted;
  }();
  if (!restored.ok()) remove_staging();
  return restored;
}

void Agent::FinishPagingIn(uint64_t serial, std::unique_ptr<LazyPageSupply> supply, std::string staging) {
  paging_threads_.Start([this, serial, supply = std::move(supply), staging = std::move(staging)] {
    const auto start = Clock::now();
    Result<page_server::LazyServeStats> served = supply->Wait();
    (void)RemoveTree(staging);
    std::lock_guard lock(mu_);
    for (auto& [n, s] : sessions_) {
      if (s->serial != serial) continue;
      s->info.paging_in = false;
      if (served.ok()) SettleIfIndependentLocked(*s);
      s->info.lazy_seconds = SecondsSince(start);
      if (served.ok()) {
        s->info.lazy_pages_served = served->pages_served;
      } else {
        s->info.lazy_error = served.status().ToString();
        config_.log.With("session", n).With("op", "lazy-restore").Error(s->info.lazy_error);
      }
    }
  });
}

Result<MigrateReport> Agent::Migrate(const std::string& name, const MigrateOptions& options,
                                     const ProgressFn& progress) {
  MigrationSource source(*host_, name, options, progress);
  Result<MigrateReport> report = source.Run();
  if (!source.report().session.empty()) {  // it took the session: a migration, not a refused request
    const MigrationResult result = report.ok()                                     ? MigrationResult::kOk
                                   : report.status().code() == StatusCode::kCancelled ? MigrationResult::kCancelled
                                   : source.rolled_back()                          ? MigrationResult::kRolledBack
                                                                                   : MigrationResult::kError;
    metrics_->MigrationEnded(options.mode, result, source.report());
  }
  return report;
}

Status Agent::AcceptMigration(transport::Channel& channel) {
  Status status = Status::Ok();
  MigrationDestination::Ending ending = MigrationDestination::Ending::kNone;
  {
    // Gone before the outcome is told: it unmarks the arrival and settles what it left running.
    MigrationDestination incoming(*host_, channel);
    status = incoming.Run();
    ending = incoming.ending();
  }
  const char* ended = nullptr;
  switch (ending) {
    case MigrationDestination::Ending::kNone: break;  // a question about an earlier one
    case MigrationDestination::Ending::kCommitted:
      metrics_->IncomingMigrationEnded(IncomingResult::kOk);
      ended = "committed: the session runs here";
      break;
    case MigrationDestination::Ending::kKept:
      metrics_->IncomingMigrationEnded(IncomingResult::kKept);
      ended = "failed with every page here: the session stays here";
      break;
    case MigrationDestination::Ending::kRefused:
      metrics_->IncomingMigrationEnded(IncomingResult::kRefused);
      ended = "refused: nothing of it runs here";
      break;
    case MigrationDestination::Ending::kEnded:
      metrics_->IncomingMigrationEnded(IncomingResult::kEnded);
      ended = "failed: the incomplete copy here ended";
      break;
  }
  // Its outcome, once it is final here, in one line (an operator, or a test, waits for it).
  if (ended) config_.log.With("op", "incoming-migration").Info(std::string("incoming migration over: ") + ended);
  return status;
}

}  // namespace elsa
