// What two agents say to each other during a migration, over an authenticated transport
// channel. Two kinds of data messages: control messages (a JSON object with an "op") and file
// chunks (CRIU's images, streamed). Page data travels as the channel's page batches. Every
// message from the network is untrusted: decoding checks everything (fuzzed: peer_message).
//
//   A (source)                         B (destination)
//   begin {session, mode}         ->
//                                 <-   ready | error
//   page batches (pre-copy)       ->   into B's page store
//   file chunks (images, refs)    ->   into a pending checkpoint
//   restore {manifest fields}     ->   commit the checkpoint, restore it
//                                 <-   restored {pid, timings} | error
//   commit | abort                ->   keep it (B's copy is now the session), or end it
//                                 <-   committed
//   A ends its stopped copy only after `committed`; without it, A resumes its own (a lost
//   `committed` can leave two copies running, never none).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "elsa/status.h"

namespace elsa::peer {

inline constexpr uint16_t kDefaultPort = 7077;
inline constexpr size_t kMaxControlBytes = 1u << 20;
inline constexpr size_t kMaxChunkBytes = 4u << 20;

struct Control {
  std::string op;  // begin, ready, restore, restored, commit, committed, abort, error
  nlohmann::json body;
};

struct FileChunk {
  std::string name;  // a plain file name (ValidateIdentifier rules)
  uint64_t offset = 0;
  bool last = false;  // the file is complete after this chunk
  std::vector<uint8_t> data;
};

std::vector<uint8_t> EncodeControl(const std::string& op, nlohmann::json body = nlohmann::json::object());
std::vector<uint8_t> EncodeFileChunk(const std::string& name, uint64_t offset, bool last, std::span<const uint8_t> data);

// A control message or a file chunk; ProtocolError naming what is wrong otherwise.
Result<std::variant<Control, FileChunk>> DecodeMessage(std::span<const uint8_t> bytes);

// "HOST[:PORT]" (IPv4 or a name; [v6]:port) -> host, port (default kDefaultPort).
Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text);

}  // namespace elsa::peer
