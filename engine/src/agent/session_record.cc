#include "agent/session_record.h"

#include <unistd.h>

#include <filesystem>

#include "elsa/engine/manifest.h"
#include "elsa/file_util.h"
#include "elsa/json_reader.h"

namespace elsa {
namespace {

using nlohmann::json;

constexpr const char* kSuffix = ".json";

json IdentityJson(const ProcessIdentity& id) { return {{"pid", id.pid}, {"start_ticks", id.start_ticks}}; }

Status ReadIdentity(JsonReader& parent, const char* key, ProcessIdentity* out) {
  const json* object = parent.Object(key, /*required=*/true);
  if (!object) return parent.status();
  JsonReader r(*object, parent.what() + "." + key, StatusCode::kCorruption);
  r.Required("pid", &out->pid).Required("start_ticks", &out->start_ticks);
  return r.status();
}

Result<SessionRecord> ParseRecord(const std::string& text, const std::string& path) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  JsonReader r(j, path, StatusCode::kCorruption);
  SessionRecord record;
  SessionInfo& info = record.info;
  r.Required("name", &info.name).Required("command", &info.command).Required("workdir", &info.workdir);
  r.Optional("started_at", &info.started_at).Optional("restored_from", &info.restored_from);
  r.Optional("last_checkpoint", &info.last_checkpoint);
  ELSA_RETURN_IF_ERROR(r.status());
  ELSA_RETURN_IF_ERROR(ReadIdentity(r, "root", &record.root));
  ELSA_RETURN_IF_ERROR(ReadIdentity(r, "monitor", &record.monitor));
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", info.name).WithContext(path));
  info.pid = record.root.pid;
  return record;
}

}  // namespace

std::string SessionRecordPath(const std::string& state_dir, const std::string& name) {
  return state_dir + "/sessions/" + name + kSuffix;
}

std::string SessionExitPath(const std::string& state_dir, const std::string& name) {
  return state_dir + "/sessions/" + name + ".exit";
}

Status WriteSessionRecord(const std::string& state_dir, const SessionRecord& record) {
  const SessionInfo& info = record.info;
  json j = {{"name", info.name},
            {"command", info.command},
            {"workdir", info.workdir},
            {"started_at", info.started_at},
            {"restored_from", info.restored_from},
            {"last_checkpoint", info.last_checkpoint},
            {"root", IdentityJson(record.root)},
            {"monitor", IdentityJson(record.monitor)}};
  return WriteFileAtomic(SessionRecordPath(state_dir, info.name), DumpJson(j, 2) + "\n");
}

void RemoveSessionRecord(const std::string& state_dir, const std::string& name) {
  (void)::unlink(SessionRecordPath(state_dir, name).c_str());
  (void)::unlink(SessionExitPath(state_dir, name).c_str());
}

std::vector<SessionRecord> ReadSessionRecords(const std::string& state_dir, const Logger& log) {
  std::vector<SessionRecord> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(state_dir + "/sessions", ec)) {
    const std::string path = entry.path().string();
    if (entry.path().extension() != kSuffix) continue;
    auto text = ReadFile(path, 1 << 20);
    auto record = text.ok() ? ParseRecord(*text, path) : Result<SessionRecord>(text.status());
    if (!record.ok()) {
      log.Warning("sessions: skipping " + path + ": " + record.status().message());
      continue;
    }
    out.push_back(std::move(*record));
  }
  return out;
}

}  // namespace elsa
