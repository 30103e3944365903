#include "ws_codec.h"

#include <openssl/evp.h>

#include <cstring>

#include "url.h"

namespace elsa::proxy {

namespace {

bool KnownOpcode(uint8_t op) { return op <= 2 || (op >= 8 && op <= 10); }

void Unmask(char* data, size_t n, const uint8_t* key) {
  for (size_t i = 0; i < n; ++i) data[i] = static_cast<char>(static_cast<uint8_t>(data[i]) ^ key[i & 3]);
}

}  // namespace

bool IsValidWireCloseCode(uint16_t code) {
  if (code >= 3000 && code <= 4999) return true;
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014);
}

Status WsReader::Fail(uint16_t code, std::string why) {
  close_code_ = code;
  return Status::ProtocolError("websocket: " + why);
}

char* WsReader::Prepare(size_t n) {
  if (buf_.size() - end_ < n && begin_ > 0) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (buf_.size() - end_ < n) buf_.resize(std::max(end_ + n, buf_.size() * 2));
  return buf_.data() + end_;
}

void WsReader::Feed(std::string_view bytes) {
  std::memcpy(Prepare(bytes.size()), bytes.data(), bytes.size());
  Commit(bytes.size());
}

void WsReader::ReleaseMemory() {
  if (begin_ != end_) return;
  begin_ = end_ = 0;
  std::vector<char>().swap(buf_);
  if (!in_message_) std::string().swap(message_);
}

Result<std::optional<WsEvent>> WsReader::Next() {
  for (;;) {
    const size_t avail = end_ - begin_;
    if (avail < 2) return std::optional<WsEvent>();
    const auto* p = reinterpret_cast<const uint8_t*>(buf_.data() + begin_);
    const bool fin = p[0] & 0x80;
    const uint8_t op = p[0] & 0x0F;
    const bool masked = p[1] & 0x80;
    uint64_t len = p[1] & 0x7F;
    if (p[0] & 0x70) return Fail(kCloseProtocolError, "reserved bits set without an extension");
    if (!KnownOpcode(op)) return Fail(kCloseProtocolError, "unknown opcode " + std::to_string(op));
    if (masked != expect_masked_) {
      return Fail(kCloseProtocolError, expect_masked_ ? "unmasked frame from a client"
                                                      : "masked frame from a server");
    }
    size_t header = 2;
    if (len == 126) {
      if (avail < 4) return std::optional<WsEvent>();
      len = (uint64_t{p[2]} << 8) | p[3];
      if (len < 126) return Fail(kCloseProtocolError, "length not minimally encoded");
      header = 4;
    } else if (len == 127) {
      if (avail < 10) return std::optional<WsEvent>();
      len = 0;
      for (int i = 0; i < 8; ++i) len = (len << 8) | p[2 + i];
      if (len >> 63) return Fail(kCloseProtocolError, "64-bit length with its top bit set");
      if (len <= 0xFFFF) return Fail(kCloseProtocolError, "length not minimally encoded");
      header = 10;
    }
    const size_t key_at = header;
    if (masked) header += 4;
    const bool control = op >= 8;
    if (control) {
      if (!fin) return Fail(kCloseProtocolError, "fragmented control frame");
      if (len > 125) return Fail(kCloseProtocolError, "control frame longer than 125 bytes");
    } else {
      if (op == 0 && !in_message_) return Fail(kCloseProtocolError, "continuation without a message");
      if (op != 0 && in_message_) return Fail(kCloseProtocolError, "new message inside a fragmented one");
      size_t so_far = op == 0 ? message_.size() : 0;
      if (len > max_message_ || so_far + len > max_message_) {
        return Fail(kCloseTooBig, "message larger than " + std::to_string(max_message_) + " bytes");
      }
    }
    if (avail < header + len) return std::optional<WsEvent>();
    char* payload = buf_.data() + begin_ + header;
    const size_t n = static_cast<size_t>(len);
    if (masked) {
      uint8_t key[4];
      std::memcpy(key, buf_.data() + begin_ + key_at, 4);
      Unmask(payload, n, key);
    }
    begin_ += header + n;
    std::string_view data(payload, n);
    if (begin_ == end_) begin_ = end_ = 0;  // data stays valid: nothing moves until Prepare

    if (control) {
      WsEvent ev;
      if (op == 0x8) {
        ev.kind = WsEvent::Kind::kClose;
        if (n == 1) return Fail(kCloseProtocolError, "close frame with a 1-byte payload");
        if (n >= 2) {
          ev.close_code = static_cast<uint16_t>((static_cast<uint8_t>(data[0]) << 8) | static_cast<uint8_t>(data[1]));
          if (!IsValidWireCloseCode(ev.close_code)) {
            return Fail(kCloseProtocolError, "invalid close code " + std::to_string(ev.close_code));
          }
          ev.payload.assign(data.substr(2));
          if (!IsValidUtf8(ev.payload)) return Fail(kCloseInvalidPayload, "close reason is not UTF-8");
        }
      } else {
        ev.kind = op == 0x9 ? WsEvent::Kind::kPing : WsEvent::Kind::kPong;
        ev.payload.assign(data);
      }
      return std::optional<WsEvent>(std::move(ev));
    }
    if (op != 0) {
      in_message_ = true;
      message_text_ = op == 0x1;
      message_.clear();
    }
    message_.append(data);
    if (!fin) continue;
    in_message_ = false;
    WsEvent ev;
    ev.kind = WsEvent::Kind::kMessage;
    ev.text = message_text_;
    ev.payload = std::move(message_);
    message_.clear();
    if (ev.text && !IsValidUtf8(ev.payload)) return Fail(kCloseInvalidPayload, "text message is not UTF-8");
    return std::optional<WsEvent>(std::move(ev));
  }
}

void AppendWsFrame(std::string& out, WsOpcode op, bool fin, std::string_view payload,
                   const uint8_t* mask) {
  const uint64_t n = payload.size();
  out.push_back(static_cast<char>((fin ? 0x80 : 0) | static_cast<uint8_t>(op)));
  const uint8_t mask_bit = mask ? 0x80 : 0;
  if (n < 126) {
    out.push_back(static_cast<char>(mask_bit | n));
  } else if (n <= 0xFFFF) {
    out.push_back(static_cast<char>(mask_bit | 126));
    out.push_back(static_cast<char>(n >> 8));
    out.push_back(static_cast<char>(n & 0xFF));
  } else {
    out.push_back(static_cast<char>(mask_bit | 127));
    for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((n >> shift) & 0xFF));
  }
  if (mask) out.append(reinterpret_cast<const char*>(mask), 4);
  const size_t at = out.size();
  out.append(payload);
  if (mask) Unmask(out.data() + at, payload.size(), mask);
}

std::string WsClosePayload(uint16_t code, std::string_view reason) {
  if (code == kCloseNoStatus) return {};
  std::string out;
  out.push_back(static_cast<char>(code >> 8));
  out.push_back(static_cast<char>(code & 0xFF));
  // Cut at 123 bytes, on a UTF-8 boundary.
  size_t n = std::min<size_t>(reason.size(), 123);
  while (n > 0 && n < reason.size() && (static_cast<uint8_t>(reason[n]) & 0xC0) == 0x80) --n;
  out.append(reason.substr(0, n));
  return out;
}

std::string Base64Encode(std::string_view in) {
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint32_t{static_cast<uint8_t>(in[i])} << 16) |
                 (uint32_t{static_cast<uint8_t>(in[i + 1])} << 8) | static_cast<uint8_t>(in[i + 2]);
    out.push_back(kChars[v >> 18]);
    out.push_back(kChars[(v >> 12) & 63]);
    out.push_back(kChars[(v >> 6) & 63]);
    out.push_back(kChars[v & 63]);
  }
  if (i < in.size()) {
    uint32_t v = uint32_t{static_cast<uint8_t>(in[i])} << 16;
    if (i + 1 < in.size()) v |= uint32_t{static_cast<uint8_t>(in[i + 1])} << 8;
    out.push_back(kChars[v >> 18]);
    out.push_back(kChars[(v >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? kChars[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::string WsAcceptFor(std::string_view key) {
  std::string input(key);
  input += "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(input.data(), input.size(), digest, &len, EVP_sha1(), nullptr);
  return Base64Encode(std::string_view(reinterpret_cast<const char*>(digest), len));
}

}  // namespace elsa::proxy
