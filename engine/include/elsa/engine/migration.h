// A live migration as its caller sees it: what to ask for, and what it reports.
// docs/architecture.md ("Migration timeline") has the steps; engine/src/migrate/ has their code.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "elsa/engine/migration_mode.h"
#include "elsa/status.h"

namespace elsa {

struct MigrateOptions {
  std::string to;  // the destination agent: HOST[:PORT]
  MigrationMode mode = MigrationMode::kHybrid;
  int max_downtime_ms = 150;  // pre-copy stops once what is left fits in this at the link rate
  int max_rounds = 8;
  // Called after pre-copy, right before the freeze, while the session still runs. An error
  // cancels the migration and leaves the session running here. elsa-hub-service pauses its
  // browsers' websockets in elsa-proxy at this point, so they wait for the freeze only, not for
  // the pre-copy rounds.
  std::function<Status()> before_freeze;
};

struct MigrationRound {
  uint64_t pages_scanned = 0;
  uint64_t pages_sent = 0;  // changed since the destination last got them
  double seconds = 0;
};

struct MigrateReport {
  std::string session;
  std::string destination;       // host:port of B's agent
  std::string address;           // where the session now answers (B's host): retarget to it
  MigrationMode mode = MigrationMode::kHybrid;
  std::string checkpoint_id;     // on B: the checkpoint the session was restored from
  pid_t pid = 0;                 // on B
  std::vector<MigrationRound> rounds;
  double precopy_seconds = 0;
  double freeze_seconds = 0;     // CRIU stopping the tree, as CRIU measured it (precopy; part of dump_seconds)
  double dump_seconds = 0;       // freeze + CRIU dump (precopy: pages B lacks sent meanwhile)
  double transfer_seconds = 0;   // image files, and waiting for every page to arrive
  double restore_seconds = 0;    // on B: (commit +) restore until the tree runs
  double resume_seconds = 0;     // on B: from CRIU's post-restore to the tree running
  double postcopy_seconds = 0;   // B running -> every page delivered to B (A's copy ends then)
  double downtime_seconds = 0;   // freeze on A -> running on B
  double total_seconds = 0;
  uint64_t bytes_precopy = 0;    // page bytes sent while the session ran on A
  uint64_t bytes_stop = 0;       // page and file bytes sent while it was frozen
  uint64_t bytes_postcopy = 0;   // page bytes sent while it ran on B
  uint64_t wire_bytes = 0;       // all bytes on the wire, after compression
  uint64_t pages_dumped = 0;
  uint64_t pages_deduplicated = 0;  // pages B already held: not sent again (a hash instead)
  uint64_t pages_lazy = 0;          // pages B's session got after it started running
  uint64_t pages_in_images = 0;     // post-copy: pages a lazy dump still wrote (sent while frozen)
  uint64_t pages_postcopy = 0;      // post-copy: lazy pages pushed as bytes
  uint64_t pages_faulted = 0;       // post-copy: of those, sent first because B's session waited
};

}  // namespace elsa
