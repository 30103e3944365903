// elsad's metric set: Prometheus naming, every series present before it happens, and each
// operation's end counted from its report, parsed back as a scraper would.
#include "agent/agent_metrics.h"

#include <gtest/gtest.h>

#include <cmath>

#include "exposition.h"

namespace elsa {
namespace {

using exposition::CheckHistograms;
using exposition::Parse;

AgentGauges SomeGauges() {
  AgentGauges g;
  g.sessions = {2, 1, 3};  // running, checkpointed, exited
  g.checkpoints = 4;
  g.checkpoint_pages = 300;
  g.unique_pages = 120;
  g.stored_bytes = 123456;
  return g;
}

TEST(AgentMetrics, FollowsPrometheusNaming) {
  AgentMetrics m(SomeGauges);
  exposition::Exposition e = Parse(m.Render());
  CheckHistograms(e);
  ASSERT_FALSE(e.type.empty());
  for (const auto& [family, type] : e.type) {
    EXPECT_TRUE(family.starts_with("elsa_")) << family;
    EXPECT_EQ(type == "counter", family.ends_with("_total")) << family;
    EXPECT_FALSE(e.help[family].empty()) << family;
  }
  // Series exist at zero before anything happened, so rate() and alerts see them.
  for (const char* mode : {"precopy", "postcopy", "hybrid"})
    for (const char* result : {"ok", "rolled_back", "error", "cancelled"})
      EXPECT_EQ(e.Value("elsa_migrations_total", {{"mode", mode}, {"result", result}}), 0) << mode << result;
  for (const char* result : {"ok", "kept", "refused", "ended"})
    EXPECT_EQ(e.Value("elsa_incoming_migrations_total", {{"result", result}}), 0) << result;
  EXPECT_EQ(e.Value("elsa_restores_total", {{"mode", "lazy"}, {"result", "error"}}), 0);
  EXPECT_EQ(e.Value("elsa_migration_downtime_seconds_count"), 0);
  EXPECT_EQ(e.Value("elsa_migration_downtime_seconds_bucket", {{"le", "0.05"}}), 0);
  EXPECT_EQ(e.Value("elsa_migration_downtime_seconds_bucket", {{"le", "10"}}), 0);
}

TEST(AgentMetrics, GaugesAreReadAtEachScrape) {
  AgentGauges now = SomeGauges();
  AgentMetrics m([&now] { return now; });
  exposition::Exposition e = Parse(m.Render());
  EXPECT_EQ(e.Value("elsa_sessions", {{"state", "running"}}), 2);
  EXPECT_EQ(e.Value("elsa_sessions", {{"state", "checkpointed"}}), 1);
  EXPECT_EQ(e.Value("elsa_sessions", {{"state", "exited"}}), 3);
  EXPECT_EQ(e.Value("elsa_checkpoints_stored"), 4);
  EXPECT_EQ(e.Value("elsa_page_store_unique_pages"), 120);
  EXPECT_EQ(e.Value("elsa_page_store_bytes"), 123456);
  EXPECT_DOUBLE_EQ(*e.Value("elsa_page_store_dedup_ratio"), 2.5);
  now = AgentGauges{};  // an empty store, an unreadable checkpoint list
  e = Parse(m.Render());
  EXPECT_EQ(e.Value("elsa_sessions", {{"state", "running"}}), 0);
  EXPECT_TRUE(std::isnan(*e.Value("elsa_checkpoints_stored")));
  EXPECT_EQ(e.Value("elsa_page_store_dedup_ratio"), 1);
}

TEST(AgentMetrics, CountsWhatTheReportsSay) {
  AgentMetrics m(SomeGauges);
  CheckpointReport checkpoint;
  checkpoint.manifest.files = {{"core-1.img", 1000, 0}, {"pages-1.refs", 24, 0}};
  checkpoint.manifest.pages = 50;
  checkpoint.manifest.pages_new = 3;
  m.CheckpointEnded(checkpoint);
  m.CheckpointEnded(Status::IoError("disk full"));
  m.RestoreEnded(/*lazy=*/true, /*ok=*/true);
  m.RestoreEnded(/*lazy=*/false, /*ok=*/false);

  MigrateReport done;
  done.downtime_seconds = 0.2;
  done.total_seconds = 3;
  done.bytes_precopy = 1 << 20;
  done.bytes_stop = 5000;
  done.bytes_postcopy = 8192;
  done.pages_postcopy = 2;
  done.pages_faulted = 1;
  m.MigrationEnded(MigrationMode::kHybrid, MigrationResult::kOk, done);
  MigrateReport failed;
  failed.bytes_precopy = 4096;
  failed.downtime_seconds = 99;  // not a completed migration's: not observed
  m.MigrationEnded(MigrationMode::kPrecopy, MigrationResult::kRolledBack, failed);
  m.MigrationEnded(MigrationMode::kPostcopy, MigrationResult::kCancelled, MigrateReport{});
  m.IncomingMigrationEnded(IncomingResult::kRefused);

  exposition::Exposition e = Parse(m.Render());
  CheckHistograms(e);
  EXPECT_EQ(e.Value("elsa_checkpoints_total", {{"result", "ok"}}), 1);
  EXPECT_EQ(e.Value("elsa_checkpoints_total", {{"result", "error"}}), 1);
  EXPECT_EQ(e.Value("elsa_checkpoint_written_bytes_total"), 1024 + 3 * 4096);
  EXPECT_EQ(e.Value("elsa_restores_total", {{"mode", "lazy"}, {"result", "ok"}}), 1);
  EXPECT_EQ(e.Value("elsa_restores_total", {{"mode", "eager"}, {"result", "error"}}), 1);
  EXPECT_EQ(e.Value("elsa_restores_total", {{"mode", "eager"}, {"result", "ok"}}), 0);
  EXPECT_EQ(e.Value("elsa_migrations_total", {{"mode", "hybrid"}, {"result", "ok"}}), 1);
  EXPECT_EQ(e.Value("elsa_migrations_total", {{"mode", "precopy"}, {"result", "rolled_back"}}), 1);
  EXPECT_EQ(e.Value("elsa_migrations_total", {{"mode", "postcopy"}, {"result", "cancelled"}}), 1);
  EXPECT_EQ(e.Value("elsa_incoming_migrations_total", {{"result", "refused"}}), 1);
  EXPECT_EQ(e.Value("elsa_migration_downtime_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(*e.Value("elsa_migration_downtime_seconds_sum"), 0.2);
  EXPECT_EQ(e.Value("elsa_migration_downtime_seconds_bucket", {{"le", "0.1"}}), 0);
  EXPECT_EQ(e.Value("elsa_migration_downtime_seconds_bucket", {{"le", "0.25"}}), 1);
  EXPECT_EQ(e.Value("elsa_migration_duration_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(*e.Value("elsa_migration_duration_seconds_sum"), 3);
  EXPECT_EQ(e.Value("elsa_migration_sent_bytes_total", {{"phase", "precopy"}}), (1 << 20) + 4096);
  EXPECT_EQ(e.Value("elsa_migration_sent_bytes_total", {{"phase", "stop"}}), 5000);
  EXPECT_EQ(e.Value("elsa_migration_sent_bytes_total", {{"phase", "postcopy"}}), 8192);
  EXPECT_EQ(e.Value("elsa_migration_postcopy_pages_total"), 2);
  EXPECT_EQ(e.Value("elsa_migration_postcopy_faulted_pages_total"), 1);
}

}  // namespace
}  // namespace elsa
