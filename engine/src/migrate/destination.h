// The destination's half of a live migration (B), as the timeline's steps in order, on a
// channel a peer opened (PeerServer). Until the source says `commit`, the copy here is not the
// session: a failure before `restored` refuses (the source resumes its own), one after it ends
// the copy here unless it already holds every page: then it is kept, whatever the source says or
// does (the source, losing the conversation, asks before it resumes its own: peer::Resolve).
// The session's name stays reserved from `begin` until the restored tree is
// adopted under it, so no other restore or migration can take it in between.
//
//   begin -> receive pages and images -> restore -> await pages (post-copy) -> await commit
//
// protocol.h has the conversation; source.h the other half.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "elsa/file_util.h"
#include "elsa/log.h"
#include "elsa/transport/transport.h"
#include "migrate/host.h"
#include "migrate/protocol.h"
#include "store/checkpoint_pages.h"

namespace elsa {

class PeerReader;
class PostcopyPages;
class ChannelForWants;

class MigrationDestination {
 public:
  MigrationDestination(MigrationHost& host, transport::Channel& channel);
  ~MigrationDestination();

  Status Run();

  // How Run() ended, for the agent's metrics: an answer to a source asking where a session runs
  // is no migration (kNone).
  enum class Ending { kNone, kCommitted, kKept, kRefused, kEnded };
  Ending ending() const { return ending_; }

 private:
  Status Steps();
  Status Begin();          // `begin`: the name reserved, the memory checked, where images go; `ready`
  Status ReceiveImages();  // pre-copy pages into the store, image files, until `restore`
  Status Restore();        // `restored` once the session runs here
  Status RestoreFromCheckpoint(Manifest manifest);  // precopy: commit the images, restore lazily from the store
  Status RestoreWithPagesToCome(Manifest manifest);  // post-copy: pages keep arriving from the source
  Status AwaitPages();     // post-copy: every lazy page in the store; `delivered`
  Status AwaitCommit();    // `commit`: the session is ours; `committed`
  Status Refuse(const Status& why);   // nothing runs here yet: tell the source, which resumes its own
  Status EndCopy(const Status& why);  // an incomplete copy runs here: it ends
  Status KeepCopy(const Status& why); // a complete copy runs here: it is the session now
  Status StandAlone();  // the copy here no longer needs this agent: before `committed` is said
  Status AnswerResolve(const peer::Resolve& asked);

  MigrationHost& host_;
  transport::Channel& channel_;
  Logger log_;
  std::chrono::milliseconds patience_;

  Result<peer::Control> first_ = Status::Unavailable("nothing received");  // the conversation's first message
  peer::Begin begin_;
  std::string incoming_;  // the name marked as arriving here (MarkIncoming), until this ends
  std::optional<NameReservation> name_;
  PagesPin pin_;  // no collection while this migration's pages are not yet named by a checkpoint
  std::optional<PendingCheckpoint> pending_;  // precopy: the images become a checkpoint here
  ScopedPath staging_;                        // post-copy: the images, until the lazy daemon has them
  std::string images_dir_;
  std::optional<peer::Restore> restore_;
  uint64_t memory_room_bytes_ = UINT64_MAX;  // what this host can hold: bounds the lazy plan
  pid_t restored_pid_ = 0;  // a tree runs here: from now on a failure ends it, unless complete_
  bool complete_ = false;   // every page of it is here and durable: from now on it is kept
  bool settled_ = false;    // it outlives this agent (StandAlone): only then is it said to be kept
  std::shared_ptr<ChannelForWants> wants_;
  std::shared_ptr<PostcopyPages> source_;  // post-copy: what the lazy server answers from
  std::unique_ptr<PeerReader> reader_;     // post-copy: feeds source_ from the channel
  Ending ending_ = Ending::kNone;
};

}  // namespace elsa
