// elsad's Prometheus metrics (`elsad --metrics-port`): what the agent counts as its operations
// end, and what it reads from its sessions and store at each scrape. The agent owns one
// (Agent::RenderMetrics); nothing here is global, so tests make their own.
//
// Counted from the operations' own reports, at the point each operation ends: a checkpoint,
// restore or migration that started (it had its session or checkpoint) counts once, whatever
// its end; a request refused before (unknown session, bad name, busy) counts nowhere.
// README.md ("Metrics") lists every metric.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <string>

#include "elsa/engine/agent.h"
#include "elsa/engine/migration.h"
#include "elsa/metrics.h"

namespace elsa {

// What a scrape reads from the agent at that moment. NaN: could not be read (the checkpoint
// store unreadable), rendered as NaN rather than a plausible wrong number.
struct AgentGauges {
  std::array<double, 3> sessions{};  // by SessionState: running, checkpointed, exited
  double checkpoints = std::numeric_limits<double>::quiet_NaN();
  double checkpoint_pages = std::numeric_limits<double>::quiet_NaN();  // every checkpoint's pages, summed
  double unique_pages = 0;
  double stored_bytes = 0;
};

// How a migration ended on its source.
enum class MigrationResult {
  kOk,          // the destination runs it
  kRolledBack,  // failed; it runs here again
  kError,       // failed after the restore, and the destination could not be asked: left frozen here
  kCancelled,   // the client said no at the freeze gate; it runs here again
};
inline constexpr size_t kMigrationResultCount = 4;

// How an incoming migration ended on its destination.
enum class IncomingResult {
  kOk,       // committed: the session runs here
  kKept,     // failed after every page was here: the session stays here
  kRefused,  // failed before anything ran here
  kEnded,    // failed while an incomplete copy ran here: it was stopped, the source resumes
};
inline constexpr size_t kIncomingResultCount = 4;

class AgentMetrics {
 public:
  explicit AgentMetrics(std::function<AgentGauges()> read_gauges);
  AgentMetrics(const AgentMetrics&) = delete;
  AgentMetrics& operator=(const AgentMetrics&) = delete;

  // A checkpoint that had its session ended: written bytes are its image files plus the pages
  // that were new to the store (the others were only named).
  void CheckpointEnded(const Result<CheckpointReport>& report);
  void RestoreEnded(bool lazy, bool ok);
  // `report` as far as the migration got: bytes and post-copy pages count whatever the end;
  // downtime and total time only for one that completed.
  void MigrationEnded(MigrationMode mode, MigrationResult result, const MigrateReport& report);
  void IncomingMigrationEnded(IncomingResult result);

  // The text format 0.0.4: the gauges read once, then every metric.
  std::string Render();

 private:
  std::function<AgentGauges()> read_gauges_;
  std::mutex scrape_mu_;  // one scrape at a time: gauges_ is what this scrape read
  AgentGauges gauges_;
  MetricsRegistry registry_;

  std::array<Counter*, 2> checkpoints_{};  // ok, error
  Counter* checkpoint_bytes_ = nullptr;
  std::array<std::array<Counter*, 2>, 2> restores_{};  // [lazy][ok]
  std::array<std::array<Counter*, kMigrationResultCount>, 3> migrations_{};  // [mode][result]
  std::array<Counter*, kIncomingResultCount> incoming_{};
  Histogram* downtime_ = nullptr;
  Histogram* duration_ = nullptr;
  std::array<Counter*, 3> bytes_sent_{};  // precopy, stop, postcopy
  Counter* postcopy_pages_ = nullptr;
  Counter* postcopy_faults_ = nullptr;
};

}  // namespace elsa
