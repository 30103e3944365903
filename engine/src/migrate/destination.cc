#include "migrate/destination.h"

#include <signal.h>

#include <atomic>
#include <mutex>

#include "migrate/image_files.h"
#include "migrate/lazy_plan.h"
#include "migrate/peer_reader.h"
#include "migrate/postcopy.h"
#include "migrate/steps.h"
#include "session/host_memory.h"
#include "session/tree_memory.h"
#include "store/checkpoint_pages.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;

std::string MiB(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// CRIU's restore from its "post-restore" notification (the tree is rebuilt) to its end (the tree
// runs).
double ResumeSeconds(double restore_seconds, const std::vector<std::pair<std::string, double>>& events) {
  CriuOutcome outcome;
  outcome.notifications = events;
  const double at = outcome.At("post-restore");
  return at > 0 ? restore_seconds - at : 0;
}

}  // namespace

// The channel as the lazy server's thread sees it: wants may still be asked for while the
// migration's thread gives up, and must not reach a channel that is gone.
class ChannelForWants {
 public:
  explicit ChannelForWants(transport::Channel* channel) : channel_(channel) {}
  Status Want(uint32_t task, uint64_t vaddr, uint64_t count) {
    std::lock_guard lock(mu_);
    if (!channel_) return Status::Unavailable("the migration's channel is closed");
    return channel_->Send(peer::EncodeControl(peer::Want{task, vaddr, count}), 0);
  }
  void Detach() {
    std::lock_guard lock(mu_);
    channel_ = nullptr;
  }

 private:
  std::mutex mu_;
  transport::Channel* channel_;
};

MigrationDestination::MigrationDestination(MigrationHost& host, transport::Channel& channel)
    : host_(host),
      channel_(channel),
      log_(host.log().With("op", "incoming-migration")),
      patience_(host.config().peer_timeout_ms),
      wants_(std::make_shared<ChannelForWants>(&channel)) {}

MigrationDestination::~MigrationDestination() {
  wants_->Detach();
  if (!incoming_.empty()) host_.MarkIncoming(incoming_, false);
}

Status MigrationDestination::Run() {
  first_ = ReceiveControl(channel_, 30s);
  if (first_.ok())
    if (const auto* asked = std::get_if<peer::Resolve>(&*first_)) return AnswerResolve(*asked);
  Status st = Steps();
  if (st.ok()) {
    ending_ = Ending::kCommitted;
    return st;
  }
  // Once a tree runs here (even if `restored` never reached the source), it is decided here: a
  // complete one stays, an incomplete one ends.
  if (restored_pid_ > 0) {
    const bool keep = complete_ && (settled_ || StandAlone().ok());
    ending_ = keep ? Ending::kKept : Ending::kEnded;
    return keep ? KeepCopy(st) : EndCopy(st);
  }
  ending_ = Ending::kRefused;
  return Refuse(st);
}

Status MigrationDestination::AnswerResolve(const peer::Resolve& asked) {
  const peer::Outcome outcome = host_.IncomingOutcome(asked.session);
  log_.With("session", asked.session)
      .Info(std::string("the source asks where the session runs: ") +
            (outcome == peer::Outcome::kKept ? "here" : outcome == peer::Outcome::kAbsent ? "not here" : "undecided"));
  ELSA_RETURN_IF_ERROR(channel_.Send(peer::EncodeControl(peer::Resolution{outcome}), 0));
  return channel_.Flush(10s);
}

// A failing step is refused or ended in Run(), never a crash of the agent, whose PeerServer
// thread this is.
Status MigrationDestination::Steps() {
  return RunSteps(this, {&MigrationDestination::Begin, &MigrationDestination::ReceiveImages,
                         &MigrationDestination::Restore, &MigrationDestination::AwaitPages,
                         &MigrationDestination::AwaitCommit});
}

Status MigrationDestination::Begin() {
  ELSA_ASSIGN_OR_RETURN(begin_, peer::Expect<peer::Begin>(std::move(first_), "to start a migration"));
  const std::string& name = begin_.session.name;
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  log_ = log_.With("session", name);
  // Refused now, while the session still runs at the source, rather than killed by the OOM
  // killer here once the source is gone. 10% headroom for what the restore itself needs.
  const uint64_t memory = begin_.memory_bytes;
  const MemoryRoom room = RoomForMemory();
  memory_room_bytes_ = room.bytes;
  log_.Info("incoming migration (" + std::string(MigrationModeName(begin_.mode)) + "): it uses " + MiB(memory) + "; " +
            room.limited_by + " leaves " + MiB(room.bytes));
  if (memory + memory / 10 > room.bytes)
    return Status::FailedPrecondition("not enough memory here for session '" + name + "': it uses " + MiB(memory) +
                                      ", and " + room.limited_by + " leaves " + MiB(room.bytes));
  ELSA_ASSIGN_OR_RETURN(NameReservation reserved, NameReservation::Take(host_, name));
  name_.emplace(std::move(reserved));
  host_.MarkIncoming(name, true);
  incoming_ = name;
  pin_ = host_.pages().Pin();
  // Post-copy images are restored as they are; pre-copy ones become a checkpoint first.
  if (IsPostcopy(begin_.mode)) {
    ELSA_ASSIGN_OR_RETURN(staging_, ScopedPath::MakeDirectory(host_.config().state_dir + "/run/incoming-" + name));
    images_dir_ = staging_.path();
  } else {
    ELSA_ASSIGN_OR_RETURN(PendingCheckpoint pending, host_.store().Begin(NewCheckpointId(name)));
    pending_.emplace(std::move(pending));
    images_dir_ = pending_->dir();
  }
  return channel_.Send(peer::EncodeControl(peer::Ready{}), 0);
}

Status MigrationDestination::ReceiveImages() {
  FileReceiver files(images_dir_);
  uint64_t pages = 0, fresh = 0;
  for (;;) {
    ELSA_ASSIGN_OR_RETURN(transport::Message message, channel_.Receive(120s));
    if (message.kind == transport::Message::Kind::kPages) {
      if (message.pages.empty()) continue;
      ELSA_ASSIGN_OR_RETURN(size_t added, host_.pages().Put(message.pages.page(0), message.pages.size()));
      pages += message.pages.size();
      fresh += added;
      continue;
    }
    ELSA_ASSIGN_OR_RETURN(peer::Message decoded, peer::DecodeMessage(message.data));
    if (auto* chunk = std::get_if<peer::FileChunk>(&decoded)) {
      ELSA_RETURN_IF_ERROR(files.Take(*chunk));
      continue;
    }
    auto* control = std::get_if<peer::Control>(&decoded);
    if (!control) return Status::ProtocolError("page refs before the session was restored");
    ELSA_ASSIGN_OR_RETURN(peer::Restore restore,
                          peer::Expect<peer::Restore>(std::move(*control), "while the images arrived"));
    ELSA_RETURN_IF_ERROR(files.CheckComplete());
    if (restore.manifest.session_name != begin_.session.name)
      return Status::ProtocolError("the manifest is for another session");
    log_.Info(std::to_string(pages) + " pages received (" + std::to_string(fresh) + " new), " +
              std::to_string(files.bytes()) + " bytes of images");
    restore_.emplace(std::move(restore));
    return Status::Ok();
  }
}

Status MigrationDestination::Restore() {
  Manifest manifest = std::move(restore_->manifest);
  ELSA_RETURN_IF_ERROR(pending_ ? RestoreFromCheckpoint(std::move(manifest))
                                : RestoreWithPagesToCome(std::move(manifest)));
  // The session runs here and is adopted under its name; the reservation has done its work.
  name_->Release();
  return Status::Ok();
}

// The images and every page they name are here: commit them as a checkpoint of ours, restored
// lazily from the store here (under the name this migration holds).
Status MigrationDestination::RestoreFromCheckpoint(Manifest manifest) {
  manifest.id = pending_->id();
  manifest.pages_in_store = true;
  ELSA_RETURN_IF_ERROR(host_.pages().VerifyPages(pending_->dir(), false).WithContext("checking the migrated pages"));
  ELSA_RETURN_IF_ERROR(host_.pages().Sync());
  ELSA_ASSIGN_OR_RETURN(Manifest committed, pending_->Commit(std::move(manifest), false));
  pending_.reset();
  RestoreOptions options;
  options.name = begin_.session.name;
  options.lazy = true;
  ELSA_ASSIGN_OR_RETURN(RestoreReport restored, host_.RestoreReserved(committed.id, options, nullptr));
  restored_pid_ = restored.session.pid;
  complete_ = true;  // restored from a checkpoint of ours: it needs nothing more from the source
  peer::Restored reply;
  reply.pid = restored.session.pid;
  reply.checkpoint = committed.id;
  reply.pages_lazy = restored.pages_lazy;
  reply.restore_seconds = restored.total_seconds;
  reply.resume_seconds = ResumeSeconds(restored.restore_seconds, restored.criu_events);
  return channel_.Send(peer::EncodeControl(reply), 0);
}

// The pages the session will fault on come through `source_`, fed by `reader_` from the moment
// it exists (the session faults before its restore is even reported).
Status MigrationDestination::RestoreWithPagesToCome(Manifest manifest) {
  ELSA_ASSIGN_OR_RETURN(CriuDriver criu, host_.Criu());
  ELSA_ASSIGN_OR_RETURN(LazyPlan plan, LazyPlan::FromImages(images_dir_, memory_room_bytes_ / page_server::kPageSize));
  const uint64_t pages_lazy = plan.pages();
  auto want = [wants = wants_](uint32_t task, uint64_t vaddr, uint64_t count) { return wants->Want(task, vaddr, count); };
  source_ = std::make_shared<PostcopyPages>(std::move(plan), host_.pages(), want, patience_);
  PeerReader::Handlers feed;
  feed.pages = [s = source_.get()](const transport::PageBatch& batch) { return s->TakePages(batch); };
  feed.refs = [s = source_.get()](std::span<const peer::PageRef> refs) { return s->TakeRefs(refs); };
  reader_ = std::make_unique<PeerReader>(channel_, std::move(feed));
  ELSA_ASSIGN_OR_RETURN(std::unique_ptr<LazyPageSupply> supply, host_.pages().StartLazySupply(criu, source_, images_dir_));
  const std::string staging = staging_.Keep();  // the lazy daemon's until it is done
  // A page that cannot be had must stop the session first: CRIU's lazy daemon giving up would
  // let it fault in zeroes instead. Before the tree is adopted its pid is not known, and CRIU's
  // restore waits forever on a task stuck on such a page: everything the restore's monitor runs
  // (CRIU and the tree) ends, and the restore fails.
  auto monitor = std::make_shared<std::atomic<pid_t>>(0);
  source_->SetGiveUp([monitor] {
    if (const pid_t m = monitor->load(); m > 0)
      for (pid_t pid : TreePids(m))
        if (pid != m) ::kill(pid, SIGKILL);
  });
  SessionInfo info;
  info.name = begin_.session.name;
  info.command = manifest.command;
  info.workdir = manifest.workdir;
  info.started_at = manifest.session_started_at;
  CriuOutcome outcome;
  ELSA_ASSIGN_OR_RETURN(SessionInfo adopted,
                        host_.RestoreAndAdopt(std::move(info), manifest.output_pipes, images_dir_, staging,
                                              std::move(supply), &outcome, [monitor](pid_t m) { monitor->store(m); }));
  restored_pid_ = adopted.pid;
  source_->SetGiveUp([pid = adopted.pid] { ::kill(pid, SIGKILL); });
  peer::Restored reply;
  reply.pid = adopted.pid;
  reply.pages_lazy = pages_lazy;
  reply.restore_seconds = outcome.seconds;
  reply.resume_seconds = ResumeSeconds(outcome.seconds, outcome.notifications);
  return channel_.Send(peer::EncodeControl(reply), 0);
}

Status MigrationDestination::AwaitPages() {
  if (!source_) return Status::Ok();
  // Pages and refs go to `source_` as they come; the source may go silent for `patience_`.
  Status delivered = [&]() -> Status {
    ELSA_RETURN_IF_ERROR(peer::Expect<peer::Pushed>(reader_->NextControl(patience_), "during post-copy").status());
    ELSA_RETURN_IF_ERROR(source_->CheckComplete());
    ELSA_RETURN_IF_ERROR(host_.pages().Sync());
    complete_ = true;
    log_.Info("all " + std::to_string(source_->plan().pages()) + " lazy pages here (" +
              std::to_string(source_->faults()) + " faults waited for them)");
    return channel_.Send(peer::EncodeControl(peer::Delivered{}), 0);
  }();
  return delivered.WithContext("post-copy");
}

Status MigrationDestination::AwaitCommit() {
  Result<peer::Control> verdict = reader_ ? reader_->NextControl(60s) : ReceiveControl(channel_, 60s);
  if (!verdict.ok()) return verdict.status().WithContext("no commit from the source");
  if (!std::holds_alternative<peer::Commit>(*verdict))
    return Status::ExternalFailure("the source took the session back after it was restored here");
  const std::string& fault = host_.config().test_fault;
  if (fault == "die-at-commit") ::raise(SIGKILL);  // as `kill -9` would, before `committed` is said
  ELSA_RETURN_IF_ERROR(StandAlone());
  if (fault == "die-after-standing-alone") ::raise(SIGKILL);  // the copy outlives us; `committed` unsaid
  ELSA_RETURN_IF_ERROR(channel_.Send(peer::EncodeControl(peer::Committed{}), 0));
  ELSA_RETURN_IF_ERROR(channel_.Flush(10s));
  if (fault == "die-after-committed") ::raise(SIGKILL);  // the source has heard `committed`
  return Status::Ok();
}

// Once the source hears `committed` it ends its copy, so the one here must outlive this agent
// first: until its lease is settled, its monitor ends it if the agent dies, which after
// `committed` would leave the session on neither host. (An agent dying before this still ends
// it here, and the source, never told, resumes its own.)
Status MigrationDestination::StandAlone() {
  if (settled_) return Status::Ok();
  ELSA_RETURN_IF_ERROR(host_.SettleIncoming(begin_.session.name, 45s));
  settled_ = true;
  return Status::Ok();
}

// The session runs here with every page: ending it would lose it if the source's copy is gone
// too (its agent died), so it stays, and the source learns so (now, or by asking: Resolve).
Status MigrationDestination::KeepCopy(const Status& why) {
  log_.Warning("the migration failed after every page was here (" + why.ToString() +
               "): the session stays here; the source ends its copy once it learns so");
  (void)channel_.Send(peer::EncodeControl(peer::Committed{}), 0);
  (void)channel_.Flush(5s);
  return Status::Ok();
}

Status MigrationDestination::Refuse(const Status& why) {
  (void)channel_.Send(peer::EncodeControl(peer::Error{why.message()}), 0);
  (void)channel_.Flush(5s);
  return why;
}

// The session runs here, but it is the source's until `commit`: it ends here (killed before its
// missing pages are given up on, so it never runs without them).
Status MigrationDestination::EndCopy(const Status& why) {
  (void)channel_.Send(peer::EncodeControl(peer::Error{why.message()}), 0);
  if (restored_pid_ > 0) ::kill(restored_pid_, SIGKILL);
  if (source_) source_->Fail(why);
  (void)host_.Stop(begin_.session.name, 5);
  return why.WithContext("the restored copy here was stopped");
}

}  // namespace elsa
