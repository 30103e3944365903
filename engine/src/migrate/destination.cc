// The destination's side of a live migration (the source's is agent_migrate.cc): pages into the
// store, images into a directory, restore, and, for post-copy, the session's memory arriving
// while it already runs here. Until the source says `commit`, the copy here is not the session:
// any failure ends it, and the source resumes its own.
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <sstream>

#include "agent/agent_progress.h"
#include "store/checkpoint_pages.h"
#include "elsa/engine/agent.h"
#include "elsa/file_util.h"
#include "migrate/channel_io.h"
#include "migrate/protocol.h"
#include "migrate/postcopy.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;

std::string MiB(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

struct MemoryRoom {
  uint64_t bytes = UINT64_MAX;
  std::string limited_by;
};

// How much memory a session restored here can have: what the kernel calls available, and below
// every memory-limited cgroup above this agent (a restored tree starts in the agent's cgroup).
MemoryRoom RoomForMemory() {
  MemoryRoom room;
  if (auto meminfo = ReadFile("/proc/meminfo"); meminfo.ok()) {
    std::istringstream lines(*meminfo);
    for (std::string line; std::getline(lines, line);) {
      unsigned long long kib = 0;
      if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kib) == 1) {
        room = {kib * 1024, "the host's available memory"};
        break;
      }
    }
  }
  auto self = ReadFile("/proc/self/cgroup");
  if (!self.ok()) return room;
  // cgroup v2 ("0::/path": memory.max, "max" when unlimited) or v1 ("N:memory:/path":
  // memory.limit_in_bytes, a huge number when unlimited).
  std::string v2_path, v1_path;
  std::istringstream lines(*self);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("0::", 0) == 0) v2_path = line.substr(3);
    const size_t first = line.find(':');
    if (first != std::string::npos && line.compare(first + 1, 7, "memory:") == 0) v1_path = line.substr(first + 8);
  }
  auto visit = [&](const std::string& mount, std::string path, const char* limit_file, const char* usage_file) {
    for (;;) {
      const std::string dir = mount + (path == "/" ? std::string() : path);
      auto max = ReadFile(dir + "/" + limit_file);
      auto current = ReadFile(dir + "/" + usage_file);
      if (max.ok() && current.ok() && !max->empty() && std::isdigit(static_cast<unsigned char>((*max)[0]))) {
        const uint64_t limit = std::stoull(*max), used = std::stoull(*current);
        const uint64_t left = limit > used ? limit - used : 0;
        if (limit < (1ull << 62) && left < room.bytes)
          room = {left, "cgroup " + path + " (memory limit " + MiB(limit) + ", " + MiB(used) + " used)"};
      }
      if (path == "/" || path.empty()) return;
      const size_t slash = path.rfind('/');
      path = slash == 0 ? "/" : path.substr(0, slash);
    }
  };
  // `ip netns exec` (a simulated host) mounts a fresh /sys without the cgroup filesystems; the
  // host's are still there through init's root.
  const std::string cgroup_root =
      ::access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 || ::access("/sys/fs/cgroup/memory", F_OK) == 0
          ? "/sys/fs/cgroup"
          : "/proc/1/root/sys/fs/cgroup";
  if (!v2_path.empty()) visit(cgroup_root, v2_path, "memory.max", "memory.current");
  if (!v2_path.empty()) visit(cgroup_root + "/unified", v2_path, "memory.max", "memory.current");
  if (!v1_path.empty()) visit(cgroup_root + "/memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes");
  return room;
}

// CRIU's restore from its "post-restore" notification (the tree is rebuilt) to its end (the tree
// runs).
double ResumeSeconds(double restore_seconds, const std::vector<std::pair<std::string, double>>& events) {
  CriuOutcome outcome;
  outcome.notifications = events;
  const double at = outcome.At("post-restore");
  return at > 0 ? restore_seconds - at : 0;
}

// The channel as the lazy server's thread sees it: wants may still be asked for while the
// migration's thread gives up, and must not reach a channel that is gone.
class ChannelForWants {
 public:
  explicit ChannelForWants(transport::Channel* channel) : channel_(channel) {}
  Status Want(uint32_t task, uint64_t vaddr, uint64_t count) {
    std::lock_guard lock(mu_);
    if (!channel_) return Status::Unavailable("the migration's channel is closed");
    return channel_->Send(peer::EncodeControl("want", {{"task", task}, {"vaddr", vaddr}, {"pages", count}}), 0);
  }
  void Detach() {
    std::lock_guard lock(mu_);
    channel_ = nullptr;
  }

 private:
  std::mutex mu_;
  transport::Channel* channel_;
};

}  // namespace

Status Agent::AcceptMigration(transport::Channel& channel) {
  ELSA_ASSIGN_OR_RETURN(peer::Control begin, ReceiveControl(channel, 30s));
  if (begin.op != "begin") return Status::ProtocolError("a migration starts with 'begin', not '" + begin.op + "'");
  const nlohmann::json session = begin.body.value("session", nlohmann::json::object());
  const std::string name = session.is_object() ? session.value("name", std::string()) : std::string();
  const std::string mode = begin.body.value("mode", std::string("precopy"));
  const bool postcopy = mode == "postcopy" || mode == "hybrid";
  auto refuse = [&](const Status& why) {
    (void)channel.Send(peer::EncodeControl("error", {{"message", why.message()}}), 0);
    (void)channel.Flush(5s);
    return why;
  };
  if (Status valid = ValidateIdentifier("session name", name); !valid.ok()) return refuse(valid);
  if (mode != "precopy" && !postcopy) return refuse(Status::ProtocolError("unknown migration mode '" + mode + "'"));
  // Refused now, while the session still runs at the source, rather than killed by the OOM
  // killer here once the source is gone. 10% headroom for what the restore itself needs.
  const uint64_t memory = begin.body.value("memory_bytes", uint64_t{0});
  const MemoryRoom room = RoomForMemory();
  std::fprintf(stderr, "elsad: incoming migration of %s (%s): it uses %s; %s leaves %s\n", name.c_str(), mode.c_str(),
               MiB(memory).c_str(), room.limited_by.c_str(), MiB(room.bytes).c_str());
  if (memory + memory / 10 > room.bytes)
    return refuse(Status::FailedPrecondition("not enough memory here for session '" + name + "': it uses " +
                                             MiB(memory) + ", and " + room.limited_by + " leaves " + MiB(room.bytes)));
  if (Status free = ReserveName(name); !free.ok()) return refuse(free);
  bool reserved = true;
  auto release_name = [&] {
    if (reserved) ReleaseName(name);
    reserved = false;
  };
  // Post-copy images are restored as they are; pre-copy ones become a checkpoint first.
  std::optional<PendingCheckpoint> pending;
  std::string images_dir = config_.state_dir + "/run/incoming-" + name;
  auto prepare = [&]() -> Status {
    if (postcopy) {
      ELSA_RETURN_IF_ERROR(RemoveTree(images_dir));
      return MakeDirs(images_dir, 0700);
    }
    ELSA_ASSIGN_OR_RETURN(PendingCheckpoint p, store_.Begin(NewCheckpointId(name)));
    images_dir = p.dir();
    pending.emplace(std::move(p));
    return Status::Ok();
  };
  if (Status ready = prepare(); !ready.ok()) {
    release_name();
    return refuse(ready);
  }
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() {
      if (!path.empty()) (void)RemoveTree(path);
    }
  } incoming{postcopy ? images_dir : std::string()};

  auto receive = [&]() -> Result<nlohmann::json> {
    ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeControl("ready"), 0));
    FileReceiver files(images_dir);
    uint64_t pages = 0, fresh = 0;
    for (;;) {
      ELSA_ASSIGN_OR_RETURN(transport::Message message, channel.Receive(120s));
      if (message.kind == transport::Message::Kind::kPages) {
        if (message.pages.empty()) continue;
        ELSA_ASSIGN_OR_RETURN(size_t added, pages_->Put(message.pages.page(0), message.pages.size()));
        pages += message.pages.size();
        fresh += added;
        continue;
      }
      ELSA_ASSIGN_OR_RETURN(auto decoded, peer::DecodeMessage(message.data));
      if (auto* chunk = std::get_if<peer::FileChunk>(&decoded)) {
        ELSA_RETURN_IF_ERROR(files.Take(*chunk));
        continue;
      }
      peer::Control* control = std::get_if<peer::Control>(&decoded);
      if (!control) return Status::ProtocolError("page refs before the session was restored");
      if (control->op == "abort")
        return Status::ExternalFailure("the source gave up: " + control->body.value("message", std::string()));
      if (control->op != "restore") return Status::ProtocolError("unexpected '" + control->op + "' during a migration");
      ELSA_RETURN_IF_ERROR(files.CheckComplete());
      std::fprintf(stderr, "elsad: migration of %s: %llu pages received (%llu new), %llu bytes of images\n",
                   name.c_str(), static_cast<unsigned long long>(pages), static_cast<unsigned long long>(fresh),
                   static_cast<unsigned long long>(files.bytes()));
      return std::move(control->body);
    }
  };
  Result<nlohmann::json> restore_request = receive();
  if (!restore_request.ok()) {
    release_name();
    return refuse(restore_request.status());
  }
  auto manifest_of = [&]() -> Result<Manifest> {
    const nlohmann::json& m = (*restore_request)["manifest"];
    ELSA_ASSIGN_OR_RETURN(Manifest manifest, ManifestFromJson(m.is_object() ? m.dump() : std::string("{}")));
    if (manifest.session_name != name) return Status::ProtocolError("the manifest is for another session");
    return manifest;
  };

  // Post-copy: the pages the session will fault on come through `source`, fed by `reader` from
  // the moment it exists (the session faults before its restore is even reported).
  std::shared_ptr<PostcopyPages> source;
  std::unique_ptr<PeerReader> reader;
  auto wants = std::make_shared<ChannelForWants>(&channel);
  struct DetachOnExit {
    std::shared_ptr<ChannelForWants> wants;
    ~DetachOnExit() { wants->Detach(); }
  } detach{wants};
  pid_t restored_pid = 0;
  auto restore = [&]() -> Result<nlohmann::json> {
    ELSA_ASSIGN_OR_RETURN(Manifest manifest, manifest_of());
    SessionInfo info;
    info.name = name;
    info.command = manifest.command;
    info.workdir = manifest.workdir;
    info.started_at = manifest.session_started_at;
    std::string staging = images_dir;
    std::unique_ptr<LazyPageSupply> supply;
    ELSA_ASSIGN_OR_RETURN(std::string criu_binary, CriuBinary());
    CriuDriver criu(criu_binary);
    uint64_t pages_lazy = 0;
    if (postcopy) {
      ELSA_ASSIGN_OR_RETURN(LazyPlan plan, LazyPlan::FromImages(images_dir));
      pages_lazy = plan.pages();
      auto want = [wants](uint32_t task, uint64_t vaddr, uint64_t count) { return wants->Want(task, vaddr, count); };
      source = std::make_shared<PostcopyPages>(std::move(plan), *pages_, want,
                                               std::chrono::milliseconds(config_.peer_timeout_ms));
      PeerReader::Handlers feed;
      feed.pages = [s = source.get()](const transport::PageBatch& batch) { return s->TakePages(batch); };
      feed.refs = [s = source.get()](std::span<const peer::PageRef> refs) { return s->TakeRefs(refs); };
      reader = std::make_unique<PeerReader>(channel, std::move(feed));
      ELSA_ASSIGN_OR_RETURN(supply, pages_->StartLazySupply(criu, source, staging));
      incoming.path.clear();  // the lazy daemon's until it is done
    } else {
      // The images and every page they name are here: commit them as a checkpoint of ours,
      // restored lazily from the store here.
      manifest.id = pending->id();
      manifest.pages_in_store = true;
      ELSA_RETURN_IF_ERROR(pages_->VerifyPages(pending->dir(), false).WithContext("checking the migrated pages"));
      ELSA_RETURN_IF_ERROR(pages_->Sync());
      ELSA_ASSIGN_OR_RETURN(Manifest committed, pending->Commit(std::move(manifest), false));
      release_name();
      RestoreOptions restore_options;
      restore_options.name = name;
      restore_options.lazy = true;
      ELSA_ASSIGN_OR_RETURN(RestoreReport restored, Restore(committed.id, restore_options, nullptr));
      restored_pid = restored.session.pid;
      return nlohmann::json{{"pid", restored.session.pid},
                            {"checkpoint", committed.id},
                            {"pages_lazy", restored.pages_lazy},
                            {"restore_seconds", restored.total_seconds},
                            {"resume_seconds", ResumeSeconds(restored.restore_seconds, restored.criu_events)}};
    }
    CriuOutcome outcome;
    ELSA_ASSIGN_OR_RETURN(SessionInfo adopted, RestoreAndAdopt(std::move(info), manifest.output_pipes, images_dir,
                                                               staging, std::move(supply), nullptr, &outcome));
    release_name();
    restored_pid = adopted.pid;
    // A page that cannot be had must stop the session first: CRIU's lazy daemon giving up would
    // let it fault in zeroes instead.
    source->SetGiveUp([pid = adopted.pid] { ::kill(pid, SIGKILL); });
    return nlohmann::json{{"pid", adopted.pid},
                          {"pages_lazy", pages_lazy},
                          {"restore_seconds", outcome.seconds},
                          {"resume_seconds", ResumeSeconds(outcome.seconds, outcome.notifications)}};
  };
  Result<nlohmann::json> restored = restore();
  release_name();
  if (!restored.ok()) return refuse(restored.status());
  ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeControl("restored", *restored), 0));

  // The session runs here, but it is the source's until `commit`: a failure before that ends
  // it here (killed before its missing pages are given up on, so it never runs without them).
  auto end_copy = [&](const Status& why) {
    if (restored_pid > 0) ::kill(restored_pid, SIGKILL);
    if (source) source->Fail(why);
    (void)Stop(name, 5);
    return why;
  };
  const auto patience = std::chrono::milliseconds(config_.peer_timeout_ms);
  if (source) {
    Status delivered = [&]() -> Status {
      // Pages and refs go to `source` as they come; the source may go silent for `patience`.
      ELSA_ASSIGN_OR_RETURN(peer::Control control, reader->NextControl(patience));
      if (control.op == "abort")
        return Status::ExternalFailure("the source gave up: " + control.body.value("message", std::string()));
      if (control.op != "pushed") return Status::ProtocolError("unexpected '" + control.op + "' during post-copy");
      ELSA_RETURN_IF_ERROR(source->CheckComplete());
      ELSA_RETURN_IF_ERROR(pages_->Sync());
      std::fprintf(stderr, "elsad: migration of %s: all %llu lazy pages here (%llu faults waited for them)\n",
                   name.c_str(), static_cast<unsigned long long>(source->plan().pages()),
                   static_cast<unsigned long long>(source->faults()));
      return channel.Send(peer::EncodeControl("delivered"), 0);
    }();
    if (!delivered.ok()) {
      (void)channel.Send(peer::EncodeControl("error", {{"message", delivered.message()}}), 0);
      return end_copy(delivered.WithContext("post-copy; the copy here was stopped"));
    }
  }
  Result<peer::Control> verdict = reader ? reader->NextControl(60s) : ReceiveControl(channel, 60s);
  if (!verdict.ok() || verdict->op != "commit") {
    return end_copy(verdict.ok() ? Status::ExternalFailure("the source took the session back after it was restored here")
                                 : verdict.status().WithContext("no commit from the source; the restored copy was stopped"));
  }
  ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeControl("committed"), 0));
  return channel.Flush(10s);
}

}  // namespace elsa
