#include "elsa/engine/manifest.h"

#include <nlohmann/json.hpp>

#include "elsa/file_util.h"

namespace elsa {
namespace {

using nlohmann::json;

// Typed field access that turns a missing or mistyped field into a Corruption status.
class Reader {
 public:
  explicit Reader(const json& obj) : obj_(obj) {}

  template <typename T>
  bool Get(const char* key, T* out) {
    auto it = obj_.find(key);
    if (it == obj_.end()) return Fail(std::string("missing field '") + key + "'");
    if constexpr (std::is_same_v<T, std::string>) {
      if (!it->is_string()) return Fail(std::string("field '") + key + "' is not a string");
    } else if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) return Fail(std::string("field '") + key + "' is not a boolean");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!it->is_number()) return Fail(std::string("field '") + key + "' is not a number");
    } else if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) return Fail(std::string("field '") + key + "' is not an integer");
    } else {
      if (!it->is_array()) return Fail(std::string("field '") + key + "' is not an array");
      for (const auto& e : *it)
        if (!e.is_string()) return Fail(std::string("field '") + key + "' must hold strings");
    }
    *out = it->get<T>();
    return true;
  }

  bool Fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    return false;
  }
  const std::string& error() const { return error_; }

 private:
  const json& obj_;
  std::string error_;
};

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
  return j.dump(2) + "\n";
}

Result<Manifest> ManifestFromJson(std::string_view text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::Corruption("manifest is not valid JSON");
  if (!j.is_object()) return Status::Corruption("manifest is not a JSON object");
  Manifest m;
  Reader r(j);
  std::string format;
  if (!r.Get("format", &format)) return Status::Corruption("manifest: " + r.error());
  if (format != Manifest::kFormat)
    return Status::Corruption("manifest format '" + format + "' is not " + std::string(Manifest::kFormat));
  bool ok = r.Get("id", &m.id) && r.Get("created_at", &m.created_at) && r.Get("host", &m.host) &&
            r.Get("kernel", &m.kernel) && r.Get("criu_version", &m.criu_version) &&
            r.Get("leave_running", &m.leave_running) && r.Get("dump_seconds", &m.dump_seconds) &&
            r.Get("network_lock_table", &m.network_lock_table);
  if (!ok) return Status::Corruption("manifest: " + r.error());
  if (Status s = ValidateIdentifier("checkpoint id", m.id); !s.ok()) return Status::Corruption("manifest: " + s.message());

  auto session = j.find("session");
  if (session == j.end() || !session->is_object()) return Status::Corruption("manifest: missing object 'session'");
  Reader rs(*session);
  ok = rs.Get("name", &m.session_name) && rs.Get("command", &m.command) && rs.Get("workdir", &m.workdir) &&
       rs.Get("started_at", &m.session_started_at) && rs.Get("source_pid", &m.source_pid) &&
       rs.Get("output_pipes", &m.output_pipes);
  if (!ok) return Status::Corruption("manifest session: " + rs.error());
  if (Status s = ValidateIdentifier("session name", m.session_name); !s.ok())
    return Status::Corruption("manifest: " + s.message());

  // Checkpoints from before the page store have no "pages": their pages images are files here.
  if (auto pages = j.find("pages"); pages != j.end()) {
    if (!pages->is_object()) return Status::Corruption("manifest: 'pages' is not an object");
    Reader rp(*pages);
    if (!(rp.Get("in_store", &m.pages_in_store) && rp.Get("count", &m.pages) && rp.Get("new", &m.pages_new)))
      return Status::Corruption("manifest pages: " + rp.error());
  }

  auto files = j.find("files");
  if (files == j.end() || !files->is_array()) return Status::Corruption("manifest: missing array 'files'");
  for (const auto& f : *files) {
    if (!f.is_object()) return Status::Corruption("manifest: a 'files' entry is not an object");
    Reader rf(f);
    ManifestFile entry;
    std::string hex;
    if (!(rf.Get("name", &entry.name) && rf.Get("size", &entry.size) && rf.Get("xxh3", &hex)))
      return Status::Corruption("manifest file entry: " + rf.error());
    if (!IsPlainFileName(entry.name))
      return Status::Corruption("manifest names file '" + entry.name + "', which is not a plain file name");
    if (!ParseHexU64(hex, &entry.xxh3))
      return Status::Corruption("manifest: checksum of " + entry.name + " is not 16 hex digits");
    m.files.push_back(std::move(entry));
  }
  return m;
}

}  // namespace elsa
