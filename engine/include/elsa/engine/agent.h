// The per-host agent's core: its sessions, its checkpoint store, and CRIU. Thread-safe; the API
// server calls it from one thread per client.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "elsa/engine/checkpoint_store.h"
#include "elsa/engine/criu_driver.h"
#include "elsa/engine/manifest.h"
#include "elsa/engine/migration.h"
#include "elsa/engine/peer_allowlist.h"
#include "elsa/engine/progress.h"
#include "elsa/engine/session.h"
#include "elsa/log.h"
#include "elsa/thread_set.h"
#include "elsa/status.h"
#include "elsa/transport/transport.h"
#include "elsa/unique_fd.h"

namespace elsa {

struct StartedMonitor;
struct SessionExit;
class AgentMetrics;
struct AgentGauges;
class CheckpointPages;
class LazyPageSupply;

struct AgentConfig {
  std::string state_dir = "/var/lib/elsa";
  CriuLocation criu;
  // Between agents (migration): mutual TLS with a certificate per agent (--peer-cert, --peer-key,
  // --peer-ca) and who may send to whom (--peer-allow); a shared secret, mixed into each stream's
  // proof inside TLS, or alone when no certificates are configured (deprecated: tests, old
  // fleets); and the transport backend.
  std::optional<transport::PeerTls> peer_tls;
  std::shared_ptr<const PeerAllowlist> peer_allow;  // null: every agent with a fleet certificate
  std::string peer_secret;
  std::string peer_backend = "tcp";
  int peer_streams = 4;
  int peer_timeout_ms = 30000;  // a peer (or link) silent this long fails the migration
  Logger log;                   // where the agent's own lines go (elsad: its log)
  std::string test_fault;       // elsad --test-fault: a failure on purpose, for the test suite
  // elsa-monitor, the per-session process that holds a session's output and exit status so the
  // session outlives the agent; empty: the elsa-monitor next to this program.
  std::string monitor_binary;

  // Agents authenticate each other by certificate or, without one, by the shared secret.
  bool PeerAuthConfigured() const { return peer_tls.has_value() || !peer_secret.empty(); }

  transport::ChannelOptions PeerChannelOptions() const {
    transport::ChannelOptions options;
    options.log = log;
    options.secret = peer_secret;
    options.tls = peer_tls;
    if (options.tls && peer_allow) {
      options.tls->authorize = [allow = peer_allow](std::string_view from, std::string_view to) {
        return allow->Check(from, to);
      };
    }
    options.streams = peer_streams;
    options.io_timeout = std::chrono::milliseconds(peer_timeout_ms);
    return options;
  }
};

struct RunRequest {
  std::string name;
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string workdir;
};

struct CheckpointReport {
  Manifest manifest;
  double dump_seconds = 0;    // CRIU: freeze, dump, (kill)
  double commit_seconds = 0;  // checksums, fsync, rename
  double total_seconds = 0;
  std::vector<std::pair<std::string, double>> criu_events;
};

struct RestoreOptions {
  std::string name;   // the restored session's name; empty: the checkpointed session's
  bool lazy = false;  // start before the memory is in: `criu lazy-pages` fed by our lazy server
};

struct RestoreReport {
  SessionInfo session;
  std::string checkpoint_id;
  bool lazy = false;
  uint64_t pages_materialized = 0;  // written into pages images before CRIU ran
  uint64_t pages_lazy = 0;          // left to arrive after the session runs
  double verify_seconds = 0;
  double materialize_seconds = 0;
  double restore_seconds = 0;
  double total_seconds = 0;
  std::vector<std::pair<std::string, double>> criu_events;
};

class Agent {
 public:
  explicit Agent(AgentConfig config);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Prepares the state directory and the store. A missing CRIU is not fatal here (sessions can
  // run without it); checkpoint and restore report it.
  Status Open();
  // Where CRIU is, or why it is not usable.
  Result<std::string> CriuBinary() const;

  Result<SessionInfo> Run(const RunRequest& request);
  std::vector<SessionInfo> Sessions();
  Result<SessionInfo> GetSession(const std::string& name);
  // Ends a running session (SIGTERM, then SIGKILL after `timeout_s`) and forgets it.
  Status Stop(const std::string& name, int timeout_s);

  Result<CheckpointReport> Checkpoint(const std::string& name, bool leave_running, const ProgressFn& progress);
  Result<RestoreReport> Restore(const std::string& checkpoint_id, const RestoreOptions& options,
                                const ProgressFn& progress);
  Result<std::vector<Manifest>> Checkpoints() const;
  // Removes the checkpoint, then reclaims the pages no other checkpoint names.
  Result<CollectReport> RemoveCheckpoint(const std::string& checkpoint_id);
  Result<Manifest> VerifyCheckpoint(const std::string& checkpoint_id) const;
  // What verifying one of all the checkpoints found: OK, or what it lost and where.
  struct CheckpointVerdict {
    std::string id;
    std::string session;
    Status status;
  };
  // Verifies every checkpoint, files and every page read back, one after another (after the
  // page store lost records, this names exactly the checkpoints that lost a page). A checkpoint
  // removed meanwhile is left out.
  Result<std::vector<CheckpointVerdict>> VerifyAllCheckpoints(const ProgressFn& progress) const;
  // Reclaims page-store space no checkpoint names (what `rm` does after removing).
  Result<CollectReport> CollectGarbage();
  struct PageStoreReport {
    uint64_t unique_pages = 0;
    uint64_t stored_bytes = 0;
  };
  PageStoreReport PageStoreStats() const;

  // Moves a running session to another host's agent (see docs/architecture.md, "Migration
  // timeline"). Any failure before the destination runs it leaves it running here.
  Result<MigrateReport> Migrate(const std::string& name, const MigrateOptions& options, const ProgressFn& progress);
  // The destination's side of a migration, on a channel a peer opened (PeerServer calls it).
  Status AcceptMigration(transport::Channel& channel);

  const AgentConfig& config() const { return config_; }

  // Prometheus text format 0.0.4 (elsad --metrics-port): what this agent counted, and its
  // sessions and store as they are now.
  std::string RenderMetrics();

 private:
  struct Session;
  class Host;  // the MigrationHost the migration's steps see (agent.cc)

  std::string LogPathFor(const std::string& name) const;
  // What a metrics scrape reads of the sessions and the store, now.
  AgentGauges MetricsGauges();
  // Registers a running tree (started or restored) under `info.name` and supervises it.
  // Called with mu_ held; an exited session of the same name is replaced, and handed back in
  // `replaced` so it can be destroyed after the lock is released.
  Result<SessionInfo> AdoptLocked(SessionInfo info, StartedMonitor started, std::unique_ptr<Session>* replaced);
  // The sessions a previous agent on this state directory left running (or that ended since).
  void AdoptSurvivors();
  // The session no longer needs this agent to live (its pages are in, its migration settled):
  // its monitor will not end it when the agent dies.
  void SettleIfIndependentLocked(Session& session);
  Status RecordLocked(const Session& session) const;
  void ForgetLocked(const std::string& name);
  Result<std::string> MonitorBinary() const;
  SessionInfo Describe(const Session& session) const;
  void OnExit(uint64_t serial, const SessionExit& exit);
  // Waits until the session with `serial` has been reaped, up to `timeout_s`.
  bool WaitForExit(std::unique_lock<std::mutex>& lock, uint64_t serial, int timeout_s);
  Session* FindLocked(const std::string& name);

  // Restore() once the session's name is reserved by the caller (which releases it).
  Result<RestoreReport> RestoreReserved(const std::string& checkpoint_id, const std::string& name,
                                        const Manifest& manifest, bool lazy, const ProgressFn& progress);
  // Restores the images in `images_dir` with CRIU (its log and scratch files in `staging`) and
  // adopts the tree as session `info.name`. With a `supply` the restore is lazy: the supply
  // serves the session's pages in the background, then `staging` is removed.
  Result<SessionInfo> RestoreAndAdopt(SessionInfo info, const std::vector<std::string>& output_pipes,
                                      const std::string& images_dir, const std::string& staging,
                                      std::unique_ptr<LazyPageSupply> supply, const ProgressFn& progress,
                                      CriuOutcome* outcome, const std::function<void(pid_t monitor)>& on_monitor = {});
  // A lazily restored session's pages keep arriving after Restore returns; this waits for
  // them in the background and records the outcome on the session.
  void FinishPagingIn(uint64_t serial, std::unique_ptr<LazyPageSupply> supply, std::string staging);
  // The manifest of a checkpoint of `info` taken now; files and pages are filled in later.
  static Manifest ManifestFor(const SessionInfo& info, const std::string& criu_version);
  // CRIU's dump, one at a time on this host (see the definition for why).
  // `on_event` also sees CRIU's notifications (a lazy dump's "status-ready").
  Result<CriuOutcome> SerializedDump(const CriuDriver& criu, const CriuDumpRequest& request,
                                     const ProgressFn& progress, const CriuNotifyFn& on_event = {});
  // Marks a running session busy for a long operation; returns its info and serial.
  Result<std::pair<SessionInfo, uint64_t>> ClaimRunning(const std::string& name);
  void ClearBusy(uint64_t serial);
  // Holds a session name for a restore (or an arriving migration) until released.
  Status ReserveName(const std::string& name);
  void ReleaseName(const std::string& name);
  // Forgets a session whose tree ended elsewhere (migrated away), once reaped.
  void ForgetAfterExit(uint64_t serial, int timeout_s);

  AgentConfig config_;
  CheckpointStore store_;
  std::unique_ptr<CheckpointPages> pages_;
  std::unique_ptr<Host> host_;
  std::unique_ptr<AgentMetrics> metrics_;  // reads the agent when scraped: declared after what it reads
  UniqueFd state_lock_;  // flock of STATE_DIR/elsad.lock, for as long as this agent lives

  mutable std::mutex mu_;
  std::mutex dump_mu_;  // serialises CRIU dumps (see Checkpoint)
  std::condition_variable exited_cv_;
  std::map<std::string, std::unique_ptr<Session>> sessions_;
  std::set<std::string> reserved_names_;  // names being restored into
  std::multiset<std::string> incoming_;   // names whose incoming migration is under way
  uint64_t next_serial_ = 1;
  // Lazy restores' page supplies, each on a thread until its session has every page: joined
  // on destruction, so pages are never cut off.
  ThreadSet paging_threads_;
  // Migrations that lost their destination after `restore`, asking it until they learn where the
  // session runs.
  ThreadSet resolving_threads_;
  std::atomic<bool> stopping_{false};
};

}  // namespace elsa
