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
//
// Post-copy (modes postcopy and hybrid) dumps with CRIU's --lazy-pages: the images leave out
// the tree's anonymous memory, which stays in A's stopped tree. Between `restored` and `commit`:
//   page batches, page refs       ->   every lazy page: its bytes, or its hash when B holds it
//                                 <-   want {task, vaddr, pages}: a fault B's session waits on
//   pushed {pages}                ->
//                                 <-   delivered (every lazy page is in B's store, synced)
// A page batch's addresses and a ref's address are PostcopyAddress(task, vaddr): task is the
// index of the process among the images' lazy pagemaps, in ascending pid order.
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
  // begin, ready, restore, restored, want, pushed, delivered, commit, committed, abort, error
  std::string op;
  nlohmann::json body;
};

// "This lazy page has this content, which you hold": post-copy without resending the bytes.
struct PageRef {
  uint64_t address = 0;  // PostcopyAddress(task, vaddr)
  uint64_t hash_low = 0;
  uint64_t hash_high = 0;
};
inline constexpr size_t kMaxRefsPerMessage = 8192;

struct FileChunk {
  std::string name;  // a plain file name (ValidateIdentifier rules)
  uint64_t offset = 0;
  bool last = false;  // the file is complete after this chunk
  std::vector<uint8_t> data;
};

std::vector<uint8_t> EncodeControl(const std::string& op, nlohmann::json body = nlohmann::json::object());
std::vector<uint8_t> EncodeFileChunk(const std::string& name, uint64_t offset, bool last, std::span<const uint8_t> data);
std::vector<uint8_t> EncodePageRefs(std::span<const PageRef> refs);  // at most kMaxRefsPerMessage

using Message = std::variant<Control, FileChunk, std::vector<PageRef>>;
// A control message, a file chunk or page refs; ProtocolError naming what is wrong otherwise.
Result<Message> DecodeMessage(std::span<const uint8_t> bytes);

// "HOST[:PORT]" (IPv4 or a name; [v6]:port) -> host, port (default kDefaultPort).
Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text);

}  // namespace elsa::peer
