// CRIU's own account of a dump: the stats-dump image it writes into its work directory, with how
// long freezing the tree took and how long the tree stayed frozen, as CRIU measured them. A
// migration reports these rather than guessing them from outside.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "elsa/status.h"

namespace elsa::page_server {

inline constexpr const char* kCriuDumpStatsFile = "stats-dump";

struct CriuDumpStats {
  double freezing_seconds = 0;  // from the first freeze request until every task stopped
  double frozen_seconds = 0;    // the tasks stopped, until CRIU let them go (or left them stopped)
  double memdump_seconds = 0;
  double memwrite_seconds = 0;
  uint64_t pages_scanned = 0;
  uint64_t pages_written = 0;
  uint64_t pages_lazy = 0;      // left in the tree for a lazy-pages client
};

// Decodes a stats-dump image (untrusted bytes: a Corruption error, never a crash).
Result<CriuDumpStats> ParseCriuDumpStats(std::span<const uint8_t> bytes);
// Reads and decodes `dir`/stats-dump, which CRIU writes into its work directory.
Result<CriuDumpStats> ReadCriuDumpStats(const std::string& dir);

}  // namespace elsa::page_server
