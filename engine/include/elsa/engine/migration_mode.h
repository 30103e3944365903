// How a live migration moves a session's memory (docs/architecture.md compares the three).
#pragma once

#include <string_view>

#include "elsa/status.h"

namespace elsa {

enum class MigrationMode {
  kPrecopy,   // rounds while it runs, then every page B lacks sent while frozen
  kPostcopy,  // frozen at once; B runs it while its memory follows
  kHybrid,    // pre-copy rounds, then post-copy for what changed since
};

std::string_view MigrationModeName(MigrationMode mode);  // "precopy", "postcopy", "hybrid"
Result<MigrationMode> ParseMigrationMode(std::string_view text);

// Pre-copy rounds run while the session runs on the source (precopy, hybrid).
inline bool HasPrecopyRounds(MigrationMode mode) { return mode != MigrationMode::kPostcopy; }
// The dump leaves the memory in the stopped tree; it follows the session (postcopy, hybrid).
inline bool IsPostcopy(MigrationMode mode) { return mode != MigrationMode::kPrecopy; }

}  // namespace elsa
