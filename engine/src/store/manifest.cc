#include "elsa/engine/manifest.h"

#include <nlohmann/json.hpp>

#include "elsa/file_util.h"
#include "elsa/json_reader.h"

namespace elsa {
namespace {

using nlohmann::json;

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

uint64_t Manifest::TotalBytes() const {
  uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

Status ValidateIdentifier(std::string_view kind, std::string_view value) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("invalid " + std::string(kind) + " '" + std::string(value) + "': " + why);
  };
  if (value.empty()) return bad("it is empty");
  if (value.size() > 128) return bad("longer than 128 characters");
  if (value.front() == '.' || value.front() == '-') return bad("it must not start with '.' or '-'");
  for (char c : value) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return bad("only letters, digits, '.', '_' and '-' are allowed");
  }
  return Status::Ok();
}

std::string ManifestToJson(const Manifest& m) {
  json files = json::array();
  for (const auto& f : m.files) files.push_back({{"name", f.name}, {"size", f.size}, {"xxh3", HexU64(f.xxh3)}});
  json j = {
      {"format", Manifest::kFormat},
      {"id", m.id},
      {"created_at", m.created_at},
      {"host", m.host},
      {"kernel", m.kernel},
      {"criu_version", m.criu_version},
      {"session",
       {{"name", m.session_name},
        {"command", m.command},
        {"workdir", m.workdir},
        {"started_at", m.session_started_at},
        {"source_pid", m.source_pid},
        {"output_pipes", m.output_pipes}}},
      {"leave_running", m.leave_running},
      {"dump_seconds", m.dump_seconds},
      {"network_lock_table", m.network_lock_table},
      {"pages", {{"in_store", m.pages_in_store}, {"count", m.pages}, {"new", m.pages_new}}},
      {"total_bytes", m.TotalBytes()},
      {"files", files},
  };
  return DumpJson(j, 2) + "\n";
}

Result<Manifest> ManifestFromJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Corruption("manifest is not valid JSON");
  if (!j.is_object()) return Status::Corruption("manifest is not a JSON object");
  Manifest m;
  JsonReader r(j, "manifest", StatusCode::kCorruption);
  std::string format;
  ELSA_RETURN_IF_ERROR(r.Required("format", &format).status());
  if (format != Manifest::kFormat)
    return Status::Corruption("manifest format '" + format + "' is not " + std::string(Manifest::kFormat));
  r.Required("id", &m.id)
      .Required("created_at", &m.created_at)
      .Required("host", &m.host)
      .Required("kernel", &m.kernel)
      .Required("criu_version", &m.criu_version)
      .Required("leave_running", &m.leave_running)
      .Required("dump_seconds", &m.dump_seconds)
      .Required("network_lock_table", &m.network_lock_table);
  ELSA_RETURN_IF_ERROR(r.status());
  if (Status s = ValidateIdentifier("checkpoint id", m.id); !s.ok()) return Status::Corruption("manifest: " + s.message());

  const json* session = r.Object("session", /*required=*/true);
  ELSA_RETURN_IF_ERROR(r.status());
  JsonReader rs(*session, "manifest session", StatusCode::kCorruption);
  rs.Required("name", &m.session_name)
      .Required("command", &m.command)
      .Required("workdir", &m.workdir)
      .Required("started_at", &m.session_started_at)
      .Required("source_pid", &m.source_pid)
      .Required("output_pipes", &m.output_pipes);
  ELSA_RETURN_IF_ERROR(rs.status());
  if (Status s = ValidateIdentifier("session name", m.session_name); !s.ok())
    return Status::Corruption("manifest: " + s.message());

  // Checkpoints from before the page store have no "pages": their pages images are files here.
  if (const json* pages = r.Object("pages", /*required=*/false)) {
    JsonReader rp(*pages, "manifest pages", StatusCode::kCorruption);
    ELSA_RETURN_IF_ERROR(
        rp.Required("in_store", &m.pages_in_store).Required("count", &m.pages).Required("new", &m.pages_new).status());
  }
  ELSA_RETURN_IF_ERROR(r.status());

  auto files = j.find("files");
  if (files == j.end() || !files->is_array()) return Status::Corruption("manifest: missing array 'files'");
  for (const auto& f : *files) {
    JsonReader rf(f, "manifest file entry", StatusCode::kCorruption);
    ManifestFile entry;
    std::string hex;
    ELSA_RETURN_IF_ERROR(rf.Required("name", &entry.name).Required("size", &entry.size).Required("xxh3", &hex).status());
    if (!IsPlainFileName(entry.name))
      return Status::Corruption("manifest names file '" + entry.name + "', which is not a plain file name");
    if (!ParseHexU64(hex, &entry.xxh3))
      return Status::Corruption("manifest: checksum of " + entry.name + " is not 16 hex digits");
    m.files.push_back(std::move(entry));
  }
  return m;
}

}  // namespace elsa
