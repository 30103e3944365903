// What two agents say to each other during a migration, over an authenticated transport
// channel. Two kinds of data messages: control messages (a JSON object with an "op"; one struct
// per op below) and file chunks (CRIU's images, streamed). Page data travels as the channel's page batches. Every
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
#include <string_view>
#include <variant>
#include <vector>

#include "elsa/engine/manifest.h"
#include "elsa/engine/migration_mode.h"
#include "elsa/status.h"

namespace elsa::peer {

inline constexpr uint16_t kDefaultPort = 7077;
inline constexpr size_t kMaxControlBytes = 1u << 20;
inline constexpr size_t kMaxChunkBytes = 4u << 20;

// The control messages, one struct each. Decoded once, in DecodeMessage: every field the sender
// must send is checked for presence and type there, so the two halves never read a body.
struct SessionSummary {
  std::string name;
  std::vector<std::string> command;
  std::string workdir;
  std::string started_at;
};
struct Begin {
  SessionSummary session;
  MigrationMode mode = MigrationMode::kHybrid;
  uint64_t memory_bytes = 0;  // the tree's resident memory: B refuses what it cannot hold
};
struct Ready {};
struct Restore {
  Manifest manifest;  // its id is the source's placeholder; B names the checkpoint it commits
  bool lazy = true;
};
struct Restored {
  int32_t pid = 0;          // the restored tree's root, on B
  std::string checkpoint;   // precopy: the checkpoint B committed and restored from
  uint64_t pages_lazy = 0;  // pages the session got after it started running
  double restore_seconds = 0;
  double resume_seconds = 0;  // CRIU's post-restore -> the tree runs
};
struct Want {  // a fault B's session waits on
  uint32_t task = 0;
  uint64_t vaddr = 0;
  uint64_t pages = 1;
};
struct Pushed {
  uint64_t pages = 0;  // every lazy page has been sent, as bytes or as a ref
};
struct Delivered {};
struct Commit {};
struct Committed {};
struct Abort {  // the source gives up; B ends its copy
  std::string message;
};
struct Error {  // the sender failed; the conversation is over
  std::string message;
};
// A source that lost its conversation after it sent `restore` cannot tell whether B runs the
// session (B keeps a copy that has every page), so it asks on a new channel before it resumes
// its own: the first and only message there.
struct Resolve {
  std::string session;
};
enum class Outcome { kKept, kAbsent, kUndecided };  // B runs it / B has none / B's side still deciding
struct Resolution {
  Outcome outcome = Outcome::kAbsent;
};
using Control = std::variant<Begin, Ready, Restore, Restored, Want, Pushed, Delivered, Commit, Committed, Abort, Error,
                             Resolve, Resolution>;

// The op's name on the wire ("begin", "restored", ...).
std::string_view OpName(const Control& control);

// "This lazy page has this content, which you hold": post-copy without resending the bytes.
struct PageRef {
  uint64_t address = 0;  // PostcopyAddress(task, vaddr)
  uint64_t hash_low = 0;
  uint64_t hash_high = 0;
};
inline constexpr size_t kMaxRefsPerMessage = 8192;
// The most pages one `want` asks for; the source sends every one of them at once. A destination
// that marks more as wanted than the source answers waits on the rest until the bulk push reaches
// them, which before `restored` never comes.
inline constexpr uint64_t kMaxWantPages = 1024;

struct FileChunk {
  std::string name;  // a plain file name (ValidateIdentifier rules)
  uint64_t offset = 0;
  bool last = false;  // the file is complete after this chunk
  std::vector<uint8_t> data;
};

std::vector<uint8_t> EncodeControl(const Control& control);
std::vector<uint8_t> EncodeFileChunk(const std::string& name, uint64_t offset, bool last, std::span<const uint8_t> data);
std::vector<uint8_t> EncodePageRefs(std::span<const PageRef> refs);  // at most kMaxRefsPerMessage

using Message = std::variant<Control, FileChunk, std::vector<PageRef>>;
// A control message, a file chunk or page refs; ProtocolError naming what is wrong otherwise
// (an unknown op, a missing field, a field of the wrong type or out of range).
Result<Message> DecodeMessage(std::span<const uint8_t> bytes);

// The control message a step waits for, as its type: the peer's `error` becomes ExternalFailure
// with its message, the source's `abort` too; any other op is a ProtocolError naming `during`.
template <typename T>
Result<T> Expect(Result<Control> received, std::string_view during) {
  if (!received.ok()) return received.status();
  if (T* wanted = std::get_if<T>(&*received)) return std::move(*wanted);
  if (const Error* e = std::get_if<Error>(&*received)) return Status::ExternalFailure("the other agent: " + e->message);
  if (const Abort* a = std::get_if<Abort>(&*received)) return Status::ExternalFailure("the source gave up: " + a->message);
  return Status::ProtocolError("unexpected '" + std::string(OpName(*received)) + "' " + std::string(during) +
                               " (expected '" + std::string(OpName(Control(T{}))) + "')");
}

// "HOST[:PORT]" (IPv4 or a name; [v6]:port) -> host, port (default kDefaultPort).
Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text);

}  // namespace elsa::peer
