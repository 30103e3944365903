#include "migrate/protocol.h"

#include <cstring>
#include <set>

#include "elsa/engine/manifest.h"
#include "elsa/json_reader.h"

namespace elsa {

std::string_view MigrationModeName(MigrationMode mode) {
  switch (mode) {
    case MigrationMode::kPrecopy: return "precopy";
    case MigrationMode::kPostcopy: return "postcopy";
    case MigrationMode::kHybrid: return "hybrid";
  }
  return "?";
}

Result<MigrationMode> ParseMigrationMode(std::string_view text) {
  for (MigrationMode m : {MigrationMode::kPrecopy, MigrationMode::kPostcopy, MigrationMode::kHybrid})
    if (text == MigrationModeName(m)) return m;
  return Status::InvalidArgument("mode '" + std::string(text.substr(0, 40)) + "': precopy, postcopy or hybrid");
}

}  // namespace elsa

namespace elsa::peer {
namespace {

using nlohmann::json;

constexpr uint8_t kControl = 'J';
constexpr uint8_t kChunk = 'F';
constexpr uint8_t kRefs = 'R';

template <typename T>
void Append(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof value);
  std::memcpy(out.data() + at, &value, sizeof value);
}

// Each op's body as JSON, and back. One function per direction, so the fields of a message are
// written and read in one place.
struct BodyWriter {
  json operator()(const Begin& m) const {
    return {{"session",
             {{"name", m.session.name},
              {"command", m.session.command},
              {"workdir", m.session.workdir},
              {"started_at", m.session.started_at}}},
            {"mode", MigrationModeName(m.mode)},
            {"memory_bytes", m.memory_bytes}};
  }
  json operator()(const Restore& m) const {
    return {{"manifest", json::parse(ManifestToJson(m.manifest))}, {"lazy", m.lazy}};
  }
  json operator()(const Restored& m) const {
    json j = {{"pid", m.pid},
              {"pages_lazy", m.pages_lazy},
              {"restore_seconds", m.restore_seconds},
              {"resume_seconds", m.resume_seconds}};
    if (!m.checkpoint.empty()) j["checkpoint"] = m.checkpoint;
    return j;
  }
  json operator()(const Want& m) const { return {{"task", m.task}, {"vaddr", m.vaddr}, {"pages", m.pages}}; }
  json operator()(const Pushed& m) const { return {{"pages", m.pages}}; }
  json operator()(const Abort& m) const { return {{"message", m.message}}; }
  json operator()(const Error& m) const { return {{"message", m.message}}; }
  json operator()(const Resolve& m) const { return {{"session", m.session}}; }
  json operator()(const Resolution& m) const {
    return {{"outcome", m.outcome == Outcome::kKept ? "kept" : m.outcome == Outcome::kAbsent ? "absent" : "undecided"}};
  }
  template <typename Empty>
  json operator()(const Empty&) const {
    return json::object();
  }
};

struct OpNamer {
  std::string_view operator()(const Begin&) const { return "begin"; }
  std::string_view operator()(const Ready&) const { return "ready"; }
  std::string_view operator()(const Restore&) const { return "restore"; }
  std::string_view operator()(const Restored&) const { return "restored"; }
  std::string_view operator()(const Want&) const { return "want"; }
  std::string_view operator()(const Pushed&) const { return "pushed"; }
  std::string_view operator()(const Delivered&) const { return "delivered"; }
  std::string_view operator()(const Commit&) const { return "commit"; }
  std::string_view operator()(const Committed&) const { return "committed"; }
  std::string_view operator()(const Abort&) const { return "abort"; }
  std::string_view operator()(const Error&) const { return "error"; }
  std::string_view operator()(const Resolve&) const { return "resolve"; }
  std::string_view operator()(const Resolution&) const { return "resolution"; }
};

Result<Control> ReadBegin(JsonReader& r) {
  Begin m;
  std::string mode;
  const json* session = r.Object("session", /*required=*/true);
  r.Required("mode", &mode).Required("memory_bytes", &m.memory_bytes);
  ELSA_RETURN_IF_ERROR(r.status());
  JsonReader rs(*session, r.what() + " session", StatusCode::kProtocolError);
  rs.Required("name", &m.session.name)
      .Required("command", &m.session.command)
      .Required("workdir", &m.session.workdir)
      .Required("started_at", &m.session.started_at);
  ELSA_RETURN_IF_ERROR(rs.status());
  Result<MigrationMode> parsed = ParseMigrationMode(mode);
  if (!parsed.ok()) return Status::ProtocolError(r.what() + ": unknown migration " + parsed.status().message());
  m.mode = *parsed;
  return Control(std::move(m));
}

Result<Control> ReadRestore(JsonReader& r) {
  Restore m;
  const json* manifest = r.Object("manifest", /*required=*/true);
  r.Required("lazy", &m.lazy);
  ELSA_RETURN_IF_ERROR(r.status());
  Result<Manifest> parsed = ManifestFromJson(DumpJson(*manifest));
  if (!parsed.ok()) return Status::ProtocolError(r.what() + ": " + parsed.status().message());
  m.manifest = std::move(*parsed);
  return Control(std::move(m));
}

Result<Control> ReadRestored(JsonReader& r) {
  Restored m;
  r.Required("pid", &m.pid)
      .Optional("checkpoint", &m.checkpoint)
      .Required("pages_lazy", &m.pages_lazy)
      .Required("restore_seconds", &m.restore_seconds)
      .Required("resume_seconds", &m.resume_seconds);
  ELSA_RETURN_IF_ERROR(r.status());
  if (m.pid <= 0) return Status::ProtocolError(r.what() + ": pid " + std::to_string(m.pid) + " is not a process");
  if (!m.checkpoint.empty())
    if (Status s = ValidateIdentifier("checkpoint id", m.checkpoint); !s.ok())
      return Status::ProtocolError(r.what() + ": " + s.message());
  return Control(std::move(m));
}

Result<Control> ReadWant(JsonReader& r) {
  Want m;
  ELSA_RETURN_IF_ERROR(r.Required("task", &m.task).Required("vaddr", &m.vaddr).Required("pages", &m.pages).status());
  if (m.pages == 0) return Status::ProtocolError(r.what() + ": asks for 0 pages");
  return Control(m);
}

template <typename T>
Result<Control> ReadMessage(JsonReader& r) {
  T m;
  m.message = "(no message)";
  ELSA_RETURN_IF_ERROR(r.Optional("message", &m.message).status());
  return Control(std::move(m));
}

Result<Control> DecodeControl(const std::string& op, const json& body) {
  JsonReader r(body, "peer message '" + op.substr(0, 40) + "'", StatusCode::kProtocolError);
  if (op == "begin") return ReadBegin(r);
  if (op == "ready") return Control(Ready{});
  if (op == "restore") return ReadRestore(r);
  if (op == "restored") return ReadRestored(r);
  if (op == "want") return ReadWant(r);
  if (op == "pushed") {
    Pushed m;
    ELSA_RETURN_IF_ERROR(r.Required("pages", &m.pages).status());
    return Control(m);
  }
  if (op == "delivered") return Control(Delivered{});
  if (op == "commit") return Control(Commit{});
  if (op == "committed") return Control(Committed{});
  if (op == "abort") return ReadMessage<Abort>(r);
  if (op == "error") return ReadMessage<Error>(r);
  if (op == "resolve") {
    Resolve m;
    ELSA_RETURN_IF_ERROR(r.Required("session", &m.session).status());
    if (Status s = ValidateIdentifier("session name", m.session); !s.ok())
      return Status::ProtocolError(r.what() + ": " + s.message());
    return Control(std::move(m));
  }
  if (op == "resolution") {
    std::string outcome;
    ELSA_RETURN_IF_ERROR(r.Required("outcome", &outcome).status());
    Resolution m;
    if (outcome == "kept") m.outcome = Outcome::kKept;
    else if (outcome == "absent") m.outcome = Outcome::kAbsent;
    else if (outcome == "undecided") m.outcome = Outcome::kUndecided;
    else return Status::ProtocolError(r.what() + ": unknown outcome \"" + outcome.substr(0, 40) + "\"");
    return Control(m);
  }
  return Status::ProtocolError("unknown control op \"" + op.substr(0, 40) + "\"");
}

}  // namespace

std::string_view OpName(const Control& control) { return std::visit(OpNamer{}, control); }

std::vector<uint8_t> EncodeControl(const Control& control) {
  json body = std::visit(BodyWriter{}, control);
  body["op"] = OpName(control);
  const std::string text = DumpJson(body);  // a message may quote CRIU's log: any bytes at all
  std::vector<uint8_t> out;
  out.reserve(1 + text.size());
  out.push_back(kControl);
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

std::vector<uint8_t> EncodeFileChunk(const std::string& name, uint64_t offset, bool last, std::span<const uint8_t> data) {
  std::vector<uint8_t> out;
  out.reserve(1 + 2 + name.size() + 8 + 1 + data.size());
  out.push_back(kChunk);
  Append<uint16_t>(out, static_cast<uint16_t>(name.size()));
  out.insert(out.end(), name.begin(), name.end());
  Append<uint64_t>(out, offset);
  out.push_back(last ? 1 : 0);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> EncodePageRefs(std::span<const PageRef> refs) {
  std::vector<uint8_t> out;
  out.reserve(1 + sizeof(uint32_t) + refs.size() * sizeof(PageRef));
  out.push_back(kRefs);
  Append<uint32_t>(out, static_cast<uint32_t>(refs.size()));
  for (const PageRef& ref : refs) {
    Append<uint64_t>(out, ref.address);
    Append<uint64_t>(out, ref.hash_low);
    Append<uint64_t>(out, ref.hash_high);
  }
  return out;
}

Result<Message> DecodeMessage(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return Status::ProtocolError("empty peer message");
  if (bytes[0] == kControl) {
    if (bytes.size() > kMaxControlBytes) return Status::ProtocolError("control message over 1 MiB");
    json body = json::parse(bytes.begin() + 1, bytes.end(), nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) return Status::ProtocolError("control message is not a JSON object");
    auto op = body.find("op");
    if (op == body.end() || !op->is_string()) return Status::ProtocolError("control message without an \"op\"");
    const std::string name = op->get<std::string>();
    body.erase("op");
    ELSA_ASSIGN_OR_RETURN(Control control, DecodeControl(name, body));
    return Message(std::move(control));
  }
  if (bytes[0] == kChunk) {
    uint16_t name_size = 0;
    if (bytes.size() < 1 + sizeof name_size) return Status::ProtocolError("truncated file chunk");
    std::memcpy(&name_size, bytes.data() + 1, sizeof name_size);
    const size_t header = 1 + sizeof name_size + name_size + sizeof(uint64_t) + 1;
    if (bytes.size() < header) return Status::ProtocolError("truncated file chunk");
    if (bytes.size() - header > kMaxChunkBytes) return Status::ProtocolError("file chunk over 4 MiB");
    FileChunk f;
    f.name.assign(reinterpret_cast<const char*>(bytes.data() + 3), name_size);
    if (Status s = ValidateIdentifier("image file name", f.name); !s.ok()) return Status::ProtocolError(s.message());
    std::memcpy(&f.offset, bytes.data() + 3 + name_size, sizeof f.offset);
    const uint8_t last = bytes[3 + name_size + sizeof f.offset];
    if (last > 1) return Status::ProtocolError("file chunk with a bad end flag");
    f.last = last == 1;
    if (f.offset > (1ull << 40)) return Status::ProtocolError("file chunk offset beyond 1 TiB");
    f.data.assign(bytes.begin() + static_cast<ptrdiff_t>(header), bytes.end());
    return Message(std::move(f));
  }
  if (bytes[0] == kRefs) {
    constexpr size_t kEntry = 3 * sizeof(uint64_t);
    uint32_t count = 0;
    if (bytes.size() < 1 + sizeof count) return Status::ProtocolError("truncated page refs");
    std::memcpy(&count, bytes.data() + 1, sizeof count);
    if (count == 0 || count > kMaxRefsPerMessage)
      return Status::ProtocolError("page refs message with " + std::to_string(count) + " refs (1-" +
                                   std::to_string(kMaxRefsPerMessage) + ")");
    if (bytes.size() != 1 + sizeof count + count * kEntry)
      return Status::ProtocolError("page refs message of " + std::to_string(bytes.size()) + " bytes for " +
                                   std::to_string(count) + " refs");
    std::vector<PageRef> refs(count);
    const uint8_t* at = bytes.data() + 1 + sizeof count;
    for (PageRef& ref : refs) {
      std::memcpy(&ref.address, at, 8);
      std::memcpy(&ref.hash_low, at + 8, 8);
      std::memcpy(&ref.hash_high, at + 16, 8);
      at += kEntry;
    }
    return Message(std::move(refs));
  }
  return Status::ProtocolError("unknown peer message kind " + std::to_string(bytes[0]));
}

Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text) {
  std::string host = text;
  uint16_t port = kDefaultPort;
  std::string port_text;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos) return Status::InvalidArgument("'" + text + "': missing ']'");
    host = text.substr(1, close - 1);
    if (close + 1 < text.size()) {
      if (text[close + 1] != ':') return Status::InvalidArgument("'" + text + "': expected ':' after ']'");
      port_text = text.substr(close + 2);
    }
  } else if (const size_t colon = text.rfind(':'); colon != std::string::npos && text.find(':') == colon) {
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
  }
  if (host.empty()) return Status::InvalidArgument("'" + text + "': no host");
  if (!port_text.empty()) {
    char* end = nullptr;
    const unsigned long p = std::strtoul(port_text.c_str(), &end, 10);
    if (*end != '\0' || p == 0 || p > 65535) return Status::InvalidArgument("'" + text + "': port must be 1-65535");
    port = static_cast<uint16_t>(p);
  }
  return std::make_pair(host, port);
}

}  // namespace elsa::peer
