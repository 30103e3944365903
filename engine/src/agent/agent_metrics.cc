#include "agent/agent_metrics.h"

#include <string_view>

#include "elsa/page_server/protocol.h"

namespace elsa {

namespace {

constexpr std::array<MigrationMode, 3> kModes = {MigrationMode::kPrecopy, MigrationMode::kPostcopy,
                                                 MigrationMode::kHybrid};
constexpr std::array<std::string_view, kMigrationResultCount> kMigrationResults = {"ok", "rolled_back", "error",
                                                                                   "cancelled"};
constexpr std::array<std::string_view, kIncomingResultCount> kIncomingResults = {"ok", "kept", "refused", "ended"};
constexpr std::array<SessionState, 3> kStates = {SessionState::kRunning, SessionState::kCheckpointed,
                                                 SessionState::kExited};

}  // namespace

AgentMetrics::AgentMetrics(std::function<AgentGauges()> read_gauges) : read_gauges_(std::move(read_gauges)) {
  MetricsRegistry& r = registry_;
  for (size_t i = 0; i < kStates.size(); ++i) {
    r.AddGaugeFunction("elsa_sessions", "Sessions this agent knows, by state.",
                       [this, i] { return gauges_.sessions[i]; },
                       {{"state", std::string(SessionStateName(kStates[i]))}});
  }
  for (size_t ok = 0; ok < 2; ++ok) {
    checkpoints_[ok] = &r.AddCounter("elsa_checkpoints_total", "Checkpoints taken, by result.",
                                     {{"result", ok == 0 ? "ok" : "error"}});
  }
  checkpoint_bytes_ = &r.AddCounter(
      "elsa_checkpoint_written_bytes_total",
      "Bytes checkpoints wrote: their image files plus the memory pages new to the page store (4 KiB each).");
  r.AddGaugeFunction("elsa_checkpoints_stored", "Checkpoints on disk.", [this] { return gauges_.checkpoints; });
  r.AddGaugeFunction("elsa_page_store_bytes", "Bytes of the page store's segments on disk.",
                     [this] { return gauges_.stored_bytes; });
  r.AddGaugeFunction("elsa_page_store_unique_pages", "Distinct 4 KiB pages the page store holds.",
                     [this] { return gauges_.unique_pages; });
  r.AddGaugeFunction("elsa_page_store_dedup_ratio",
                     "Pages named by all checkpoints on disk (summed over checkpoints) per distinct page stored; "
                     "1 when the store is empty.",
                     [this] {
                       return gauges_.unique_pages > 0 ? gauges_.checkpoint_pages / gauges_.unique_pages : 1.0;
                     });
  for (size_t lazy = 0; lazy < 2; ++lazy) {
    for (size_t ok = 0; ok < 2; ++ok) {
      restores_[lazy][ok] = &r.AddCounter("elsa_restores_total",
                                          "Restores of a checkpoint (elsa restore), by mode and result; a migration's "
                                          "restore on its destination is counted under elsa_incoming_migrations_total.",
                                          {{"mode", lazy ? "lazy" : "eager"}, {"result", ok ? "ok" : "error"}});
    }
  }
  for (size_t m = 0; m < kModes.size(); ++m) {
    for (size_t res = 0; res < kMigrationResultCount; ++res) {
      migrations_[m][res] = &r.AddCounter(
          "elsa_migrations_total",
          "Migrations of a session from this host, by mode and result: ok (it runs on the destination), "
          "rolled_back (it runs here again), cancelled (stopped at the freeze gate, it runs here again), error (the "
          "destination could not be asked after the restore: left frozen here until it answers).",
          {{"mode", std::string(MigrationModeName(kModes[m]))}, {"result", std::string(kMigrationResults[res])}});
    }
  }
  for (size_t res = 0; res < kIncomingResultCount; ++res) {
    incoming_[res] = &r.AddCounter(
        "elsa_incoming_migrations_total",
        "Migrations of a session to this host, by result: ok (committed), kept (failed once every page was here: "
        "it stays), refused (failed before it ran here), ended (failed while it ran here incomplete: stopped).",
        {{"result", std::string(kIncomingResults[res])}});
  }
  downtime_ = &r.AddHistogram("elsa_migration_downtime_seconds",
                              "Downtime of completed migrations from this host: freeze here to running there.",
                              {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  duration_ = &r.AddHistogram("elsa_migration_duration_seconds",
                              "Total time of completed migrations from this host, start to the last page delivered.",
                              {0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300});
  constexpr std::array<std::string_view, 3> kPhases = {"precopy", "stop", "postcopy"};
  for (size_t p = 0; p < kPhases.size(); ++p) {
    bytes_sent_[p] = &r.AddCounter("elsa_migration_sent_bytes_total",
                                   "Bytes migrations from this host sent, by phase: pages while the session ran here "
                                   "(precopy), pages and images while it was frozen (stop), pages while it ran on the "
                                   "destination (postcopy). Before compression.",
                                   {{"phase", std::string(kPhases[p])}});
  }
  postcopy_pages_ = &r.AddCounter("elsa_migration_postcopy_pages_total",
                                  "Pages migrations from this host sent after the session ran on the destination.");
  postcopy_faults_ = &r.AddCounter(
      "elsa_migration_postcopy_faulted_pages_total",
      "Of elsa_migration_postcopy_pages_total, pages sent first because the session on the destination waited for "
      "them.");
}

void AgentMetrics::CheckpointEnded(const Result<CheckpointReport>& report) {
  checkpoints_[report.ok() ? 0 : 1]->Increment();
  if (report.ok())
    checkpoint_bytes_->Increment(report->manifest.TotalBytes() + report->manifest.pages_new * page_server::kPageSize);
}

void AgentMetrics::RestoreEnded(bool lazy, bool ok) { restores_[lazy ? 1 : 0][ok ? 1 : 0]->Increment(); }

void AgentMetrics::MigrationEnded(MigrationMode mode, MigrationResult result, const MigrateReport& report) {
  migrations_[static_cast<size_t>(mode)][static_cast<size_t>(result)]->Increment();
  bytes_sent_[0]->Increment(report.bytes_precopy);
  bytes_sent_[1]->Increment(report.bytes_stop);
  bytes_sent_[2]->Increment(report.bytes_postcopy);
  postcopy_pages_->Increment(report.pages_postcopy);
  postcopy_faults_->Increment(report.pages_faulted);
  if (result == MigrationResult::kOk) {
    downtime_->Observe(report.downtime_seconds);
    duration_->Observe(report.total_seconds);
  }
}

void AgentMetrics::IncomingMigrationEnded(IncomingResult result) {
  incoming_[static_cast<size_t>(result)]->Increment();
}

std::string AgentMetrics::Render() {
  std::lock_guard lock(scrape_mu_);
  gauges_ = read_gauges_();
  return registry_.Render();
}

}  // namespace elsa
