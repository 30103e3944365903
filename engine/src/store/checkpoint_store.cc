#include "elsa/engine/checkpoint_store.h"

#include <chrono>
#include <ctime>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <set>

#include "elsa/file_util.h"

namespace elsa {
namespace {

constexpr const char* kPendingPrefix = ".pending-";
constexpr const char* kTrashPrefix = ".trash-";
// Next to a `.pending-ID` whose commit failed with keep_on_failure: the images there may be all
// that is left of a session, so Open() leaves that directory for the user.
constexpr const char* kKeptSuffix = ".kept";

Result<std::vector<std::string>> ListDirectory(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) names.push_back(entry.path().filename());
  if (ec) return Status::IoError("list " + dir + ": " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

PendingCheckpoint::PendingCheckpoint(std::string id, std::string dir, std::string final_dir)
    : id_(std::move(id)), dir_(std::move(dir)), final_dir_(std::move(final_dir)) {}

PendingCheckpoint::PendingCheckpoint(PendingCheckpoint&& o) noexcept
    : id_(std::move(o.id_)), dir_(std::move(o.dir_)), final_dir_(std::move(o.final_dir_)),
      done_(std::exchange(o.done_, true)) {}

PendingCheckpoint::~PendingCheckpoint() {
  if (!done_) (void)RemoveTree(dir_);
}

Result<Manifest> PendingCheckpoint::Commit(Manifest manifest, bool keep_on_failure) {
  auto result = [&]() -> Result<Manifest> {
    ELSA_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir_));
    manifest.id = id_;
    manifest.files.clear();
    for (const auto& name : names) {
      if (name == CheckpointStore::kManifestName) continue;
      const std::string path = dir_ + "/" + name;
      struct stat st {};
      if (::lstat(path.c_str(), &st) != 0) return Status::FromErrno("stat " + path, errno);
      if (!S_ISREG(st.st_mode)) return Status::Internal("unexpected non-file " + path + " in checkpoint");
      ELSA_ASSIGN_OR_RETURN(FileDigest digest, DigestFile(path, /*fsync_file=*/true));
      manifest.files.push_back({name, digest.size, digest.xxh3});
    }
    ELSA_RETURN_IF_ERROR(WriteFileAtomic(dir_ + "/" + CheckpointStore::kManifestName, ManifestToJson(manifest)));
    if (::rename(dir_.c_str(), final_dir_.c_str()) != 0)
      return Status::FromErrno("rename " + dir_ + " to " + final_dir_, errno);
    done_ = true;
    ELSA_RETURN_IF_ERROR(FsyncPath(std::filesystem::path(final_dir_).parent_path()));
    return manifest;
  }();
  if (!result.ok() && !done_ && keep_on_failure) {
    done_ = true;  // keep the images: they may be all that is left of the session
    Status marked = WriteFileAtomic(dir_ + kKeptSuffix, result.status().message() + "\n");
    return result.status().WithContext("commit failed; the images are kept in " + dir_ +
                                       (marked.ok() ? " (also across agent restarts; remove it when done)"
                                                    : " (until the agent restarts: " + marked.message() + ")"));
  }
  return result;
}

CheckpointStore::CheckpointStore(std::string root, Logger log) : root_(std::move(root)), log_(std::move(log)) {}

Status CheckpointStore::Open() {
  ELSA_RETURN_IF_ERROR(MakeDirs(root_, 0700));
  ELSA_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(root_));
  const std::set<std::string> present(names.begin(), names.end());
  for (const auto& name : names) {
    const bool marker = name.size() > std::string(kKeptSuffix).size() &&
                        name.compare(name.size() - std::string(kKeptSuffix).size(), std::string::npos, kKeptSuffix) == 0;
    if (marker) {
      // A marker whose images the user has removed goes too.
      if (!present.count(name.substr(0, name.size() - std::string(kKeptSuffix).size())))
        ELSA_RETURN_IF_ERROR(RemoveTree(root_ + "/" + name));
      continue;
    }
    if (name.rfind(kPendingPrefix, 0) == 0 && present.count(name + kKeptSuffix)) {
      log_.Warning("checkpoint store: " + root_ + "/" + name + " holds the images of a checkpoint whose commit failed; kept");
      continue;
    }
    if (name.rfind(kPendingPrefix, 0) == 0 || name.rfind(kTrashPrefix, 0) == 0) {
      log_.Info("checkpoint store: removing leftover " + root_ + "/" + name);
      ELSA_RETURN_IF_ERROR(RemoveTree(root_ + "/" + name));
    }
  }
  return Status::Ok();
}

Result<PendingCheckpoint> CheckpointStore::Begin(const std::string& id) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("checkpoint id", id));
  const std::string final_dir = PathOf(id);
  if (::access(final_dir.c_str(), F_OK) == 0) return Status::AlreadyExists("checkpoint " + id + " already exists");
  const std::string dir = root_ + "/" + kPendingPrefix + id;
  if (::mkdir(dir.c_str(), 0700) != 0) return Status::FromErrno("create " + dir, errno);
  return PendingCheckpoint(id, dir, final_dir);
}

Result<Manifest> CheckpointStore::Load(const std::string& id) const {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("checkpoint id", id));
  const std::string path = PathOf(id) + "/" + kManifestName;
  if (::access(PathOf(id).c_str(), F_OK) != 0)
    return Status::NotFound("no checkpoint '" + id + "' in " + root_ + " (`elsa checkpoints` lists them)");
  auto text = ReadFile(path, 16u << 20);
  if (!text.ok()) return Status::Corruption("checkpoint " + id + " has no readable manifest: " + text.status().message());
  auto manifest = ManifestFromJson(*text);
  if (!manifest.ok()) return manifest.status().WithContext("checkpoint " + id);
  if (manifest->id != id)
    return Status::Corruption("checkpoint " + id + ": its manifest is for '" + manifest->id + "'");
  return manifest;
}

Status CheckpointStore::Verify(const Manifest& m) const {
  const std::string dir = PathOf(m.id);
  std::set<std::string> expected;
  for (const auto& f : m.files) {
    expected.insert(f.name);
    const std::string path = dir + "/" + f.name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return Status::Corruption("checkpoint " + m.id + " is damaged: file " + f.name + " is missing");
    if (static_cast<uint64_t>(st.st_size) != f.size)
      return Status::Corruption("checkpoint " + m.id + " is damaged: " + f.name + " has " +
                                std::to_string(st.st_size) + " bytes, the manifest says " + std::to_string(f.size));
    ELSA_ASSIGN_OR_RETURN(FileDigest digest, DigestFile(path));
    if (digest.xxh3 != f.xxh3)
      return Status::Corruption("checkpoint " + m.id + " is damaged: checksum mismatch in " + f.name +
                                " (xxh3 " + HexU64(digest.xxh3) + ", the manifest says " + HexU64(f.xxh3) + ")");
  }
  ELSA_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  for (const auto& name : names) {
    if (name != kManifestName && !expected.count(name))
      return Status::Corruption("checkpoint " + m.id + " has a file the manifest does not list: " + name);
  }
  return Status::Ok();
}

Result<std::vector<Manifest>> CheckpointStore::List() const {
  ELSA_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(root_));
  std::vector<Manifest> out;
  for (const auto& name : names) {
    if (name.empty() || name[0] == '.') continue;
    auto m = Load(name);
    if (!m.ok()) {
      // An unreadable checkpoint is reported, not hidden: list it with what we know.
      log_.Warning("checkpoint store: " + m.status().message());
      Manifest broken;
      broken.id = name;
      broken.session_name = "?";
      out.push_back(std::move(broken));
      continue;
    }
    out.push_back(std::move(*m));
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const Manifest& a, const Manifest& b) { return a.created_at < b.created_at; });
  return out;
}

Status CheckpointStore::Remove(const std::string& id) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("checkpoint id", id));
  const std::string dir = PathOf(id);
  if (::access(dir.c_str(), F_OK) != 0)
    return Status::NotFound("no checkpoint '" + id + "' in " + root_ + " (`elsa checkpoints` lists them)");
  // Rename first so the checkpoint disappears atomically even if deletion is interrupted.
  const std::string trash = root_ + "/" + kTrashPrefix + id;
  if (::rename(dir.c_str(), trash.c_str()) != 0) return Status::FromErrno("rename " + dir, errno);
  return RemoveTree(trash);
}

std::string NewCheckpointId(const std::string& session_name) {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%04d%02d%02d-%02d%02d%02d-%03lld", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(ms));
  // Ids are bounded at 128 characters; the session name is at most 128, so trim it.
  return session_name.substr(0, 100) + buf;
}


}  // namespace elsa
