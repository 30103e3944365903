#include "migrate/protocol.h"

#include <cstring>
#include <set>

#include "elsa/engine/manifest.h"

namespace elsa::peer {
namespace {

constexpr uint8_t kControl = 'J';
constexpr uint8_t kChunk = 'F';
constexpr uint8_t kRefs = 'R';

const std::set<std::string>& KnownOps() {
  static const std::set<std::string> ops = {"begin",  "ready",     "restore", "restored", "want", "pushed",
                                            "delivered", "commit", "committed", "abort", "error"};
  return ops;
}

template <typename T>
void Append(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof value);
  std::memcpy(out.data() + at, &value, sizeof value);
}

}  // namespace

std::vector<uint8_t> EncodeControl(const std::string& op, nlohmann::json body) {
  body["op"] = op;
  const std::string text = body.dump();
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
    auto body = nlohmann::json::parse(bytes.begin() + 1, bytes.end(), nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded() || !body.is_object()) return Status::ProtocolError("control message is not a JSON object");
    auto op = body.find("op");
    if (op == body.end() || !op->is_string()) return Status::ProtocolError("control message without an \"op\"");
    Control c;
    c.op = op->get<std::string>();
    if (!KnownOps().count(c.op)) return Status::ProtocolError("unknown control op \"" + c.op.substr(0, 40) + "\"");
    body.erase("op");
    c.body = std::move(body);
    return Message(std::move(c));
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
