// The manifest of a checkpoint: what was dumped, where, by what, and a checksum of every file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "elsa/status.h"

namespace elsa {

struct ManifestFile {
  std::string name;  // a plain file name inside the checkpoint directory
  uint64_t size = 0;
  uint64_t xxh3 = 0;
};

struct Manifest {
  static constexpr std::string_view kFormat = "elsa-checkpoint/1";

  std::string id;
  std::string created_at;  // ISO 8601 UTC
  std::string host;
  std::string kernel;
  std::string criu_version;

  // The session as it was when dumped.
  std::string session_name;
  std::vector<std::string> command;
  std::string workdir;
  std::string session_started_at;
  int64_t source_pid = 0;
  // CRIU inherit-fd keys ("pipe:[123]") of the session's stdout/stderr pipe, which the agent
  // owns and must hand back on restore.
  std::vector<std::string> output_pipes;
  bool leave_running = false;
  double dump_seconds = 0;
  // The nftables table CRIU left locking the dumped tree's TCP connections ("" if none).
  std::string network_lock_table;

  // Pages in the agent's page store (refs files here name them) rather than in pages images.
  bool pages_in_store = false;
  uint64_t pages = 0;      // pages dumped
  uint64_t pages_new = 0;  // of those, pages the store did not already hold

  std::vector<ManifestFile> files;

  uint64_t TotalBytes() const;
};

std::string ManifestToJson(const Manifest& manifest);
// Strict: a manifest from disk may be damaged or hostile, so every field is type-checked and
// every file name must be a plain name (no '/', no "..").
Result<Manifest> ManifestFromJson(std::string_view json);

// Session names and checkpoint ids: 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'.
// `kind` names the thing in the error ("session name", "checkpoint id").
Status ValidateIdentifier(std::string_view kind, std::string_view value);

}  // namespace elsa
