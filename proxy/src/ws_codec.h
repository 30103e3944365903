// RFC 6455 framing for the proxy's side of backend websockets. Beast serves the browsers; the
// backend side is ours because a pause needs what Beast's close does not give: after sending
// our close frame, every data frame the server sent before its close reply must still reach
// the browser (Beast's close discards them).
//
// Pure: the reader reassembles frames from bytes, the writer builds frames; no sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "elsa/status.h"

namespace elsa::proxy {

enum class WsOpcode : uint8_t {
  kContinuation = 0x0,
  kText = 0x1,
  kBinary = 0x2,
  kClose = 0x8,
  kPing = 0x9,
  kPong = 0xA,
};

// Close codes (RFC 6455 7.4.1).
inline constexpr uint16_t kCloseNormal = 1000;
inline constexpr uint16_t kCloseGoingAway = 1001;
inline constexpr uint16_t kCloseProtocolError = 1002;
inline constexpr uint16_t kCloseNoStatus = 1005;       // never on the wire
inline constexpr uint16_t kCloseAbnormal = 1006;       // never on the wire
inline constexpr uint16_t kCloseInvalidPayload = 1007;
inline constexpr uint16_t kCloseTooBig = 1009;
inline constexpr uint16_t kCloseInternalError = 1011;
inline constexpr uint16_t kCloseServiceRestart = 1012;

// True for codes a peer may send in a close frame.
bool IsValidWireCloseCode(uint16_t code);

struct WsEvent {
  enum class Kind { kMessage, kPing, kPong, kClose };
  Kind kind = Kind::kMessage;
  bool text = false;               // kMessage: text (UTF-8 checked) or binary
  std::string payload;             // message data, ping/pong data, or close reason
  uint16_t close_code = kCloseNoStatus;  // kClose
};

// Reassembles the frames one peer sends into events. Frames from a server must be unmasked and
// from a client masked; no extension is negotiated, so RSV bits must be clear. Violations are
// errors (kProtocolError) whose close_code() says what to answer: 1002, 1007 or 1009.
class WsReader {
 public:
  WsReader(bool expect_masked, size_t max_message_bytes)
      : expect_masked_(expect_masked), max_message_(max_message_bytes) {}

  // Room for at least `n` more bytes to be received into; Commit() what arrived.
  char* Prepare(size_t n);
  void Commit(size_t n) { end_ += n; }
  void Feed(std::string_view bytes);  // Prepare + copy + Commit

  // The next complete event, nullopt until more bytes arrive, or a protocol error.
  Result<std::optional<WsEvent>> Next();
  uint16_t close_code() const { return close_code_; }
  // Nothing buffered: the memory can go back while the connection idles.
  bool Idle() const { return begin_ == end_ && !in_message_; }
  void ReleaseMemory();

 private:
  Status Fail(uint16_t code, std::string why);

  const bool expect_masked_;
  const size_t max_message_;
  std::vector<char> buf_;
  size_t begin_ = 0;  // first unconsumed byte
  size_t end_ = 0;    // one past the last received byte
  bool in_message_ = false;
  bool message_text_ = false;
  std::string message_;  // fragments so far
  uint16_t close_code_ = kCloseProtocolError;
};

// Appends one frame. A non-null `mask` (4 bytes) masks it, as a client must.
void AppendWsFrame(std::string& out, WsOpcode op, bool fin, std::string_view payload,
                   const uint8_t* mask);
// A close frame's payload: the code (unless 1005) and a reason cut to fit 123 bytes.
std::string WsClosePayload(uint16_t code, std::string_view reason);

// The handshake's Sec-WebSocket-Accept for a Sec-WebSocket-Key.
std::string WsAcceptFor(std::string_view key);
std::string Base64Encode(std::string_view bytes);

}  // namespace elsa::proxy
