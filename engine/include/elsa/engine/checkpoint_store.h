// Checkpoint store v1: one directory per checkpoint under a root, each with its CRIU images and
// a manifest. A checkpoint is written into a hidden directory and becomes visible only by an
// atomic rename after everything in it is fsync'd, so an interrupted checkpoint never appears
// and never touches an earlier one.
#pragma once

#include <string>
#include <vector>

#include "elsa/engine/manifest.h"
#include "elsa/log.h"
#include "elsa/status.h"

namespace elsa {

class CheckpointStore;

// What reclaiming page-store space found and freed.
struct CollectReport {
  uint64_t checkpoints = 0;  // scanned for the pages they name
  uint64_t live_pages = 0;
  uint64_t pages_before = 0;
  uint64_t pages_after = 0;
  uint64_t bytes_reclaimed = 0;
  double seconds = 0;
};

// A checkpoint being written. Discarded (directory removed) unless committed.
class PendingCheckpoint {
 public:
  PendingCheckpoint(PendingCheckpoint&& other) noexcept;
  PendingCheckpoint& operator=(PendingCheckpoint&&) = delete;
  PendingCheckpoint(const PendingCheckpoint&) = delete;
  ~PendingCheckpoint();

  const std::string& id() const { return id_; }
  const std::string& dir() const { return dir_; }  // where CRIU writes the images

  // Checksums and fsyncs every file, writes the manifest, renames into place. `manifest.files`
  // is filled from the directory. On failure the directory is kept when `keep_on_failure` is set
  // (the dumped session is gone and these images are all that is left of it).
  Result<Manifest> Commit(Manifest manifest, bool keep_on_failure);

 private:
  friend class CheckpointStore;
  PendingCheckpoint(std::string id, std::string dir, std::string final_dir);

  std::string id_;
  std::string dir_;
  std::string final_dir_;
  bool done_ = false;
};

class CheckpointStore {
 public:
  static constexpr const char* kManifestName = "manifest.json";

  explicit CheckpointStore(std::string root, Logger log = Logger());

  // Creates the root and removes what interrupted checkpoints and removals left behind.
  Status Open();

  Result<PendingCheckpoint> Begin(const std::string& id);
  Result<Manifest> Load(const std::string& id) const;
  // Every file the manifest names exists with its size and checksum, and nothing else is there.
  Status Verify(const Manifest& manifest) const;
  Result<std::vector<Manifest>> List() const;  // oldest first
  Status Remove(const std::string& id);

  std::string PathOf(const std::string& id) const { return root_ + "/" + id; }
  const std::string& root() const { return root_; }

 private:
  std::string root_;
  Logger log_;
};

// A new checkpoint id for a session: NAME-YYYYMMDD-HHMMSS-mmm (UTC).
std::string NewCheckpointId(const std::string& session_name);

}  // namespace elsa
