// The agent's two sides of a live migration (peer_protocol.h has the conversation):
//   source: pre-copy rounds while the session runs, then freeze + dump (pages the destination
//           lacks forwarded as CRIU hands them over), images shipped, restore on the
//           destination, and only then the source's stopped copy ended;
//   destination: pages into its store, images into a pending checkpoint, commit, restore.
// Until the destination reports the session running, every failure resumes it on the source.
#include <signal.h>

#include <chrono>
#include <cstdio>

#include "agent_progress.h"
#include "checkpoint_pages.h"
#include "elsa/engine/agent.h"
#include "elsa/engine/session_process.h"
#include "elsa/file_util.h"
#include "migration.h"
#include "peer_protocol.h"
#include "tree_memory.h"

namespace elsa {
namespace {

using Clock = AgentClock;
using namespace std::chrono_literals;

std::string MiB(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

}  // namespace

Result<MigrateReport> Agent::Migrate(const std::string& name, const MigrateOptions& options,
                                     const ProgressFn& progress) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  if (options.mode != "precopy" && options.mode != "hybrid")
    return Status::InvalidArgument("mode '" + options.mode + "': precopy or hybrid (postcopy is not built yet)");
  if (config_.peer_secret.empty())
    return Status::FailedPrecondition("this agent has no peer secret: start elsad with --peer-secret-file");
  ELSA_ASSIGN_OR_RETURN(auto destination, peer::ParseHostPort(options.to));
  const auto start = Clock::now();
  ELSA_ASSIGN_OR_RETURN(auto claimed, ClaimRunning(name));
  const SessionInfo info = claimed.first;
  const uint64_t serial = claimed.second;

  MigrateReport out;
  out.session = name;
  out.destination = destination.first + ":" + std::to_string(destination.second);
  out.address = destination.first;
  out.mode = options.mode;
  // Set once CRIU has stopped the tree: from then on a failure must resume it.
  bool stopped = false;
  std::string lock_table;
  std::unique_ptr<transport::Channel> channel;

  auto run = [&]() -> Status {
    ELSA_ASSIGN_OR_RETURN(transport::Backend backend, transport::ParseBackend(config_.peer_backend));
    ELSA_ASSIGN_OR_RETURN(auto transport, transport::MakeTransport(backend));
    const transport::ChannelOptions channel_options = config_.PeerChannelOptions();
    Report(progress, "connect", "to " + out.destination);
    ELSA_ASSIGN_OR_RETURN(channel, transport->Connect({destination.first, destination.second}, channel_options));
    nlohmann::json session = {{"name", info.name}, {"command", info.command}, {"workdir", info.workdir},
                              {"started_at", info.started_at}};
    ELSA_RETURN_IF_ERROR(channel->Send(peer::EncodeControl("begin", {{"session", session}, {"mode", options.mode}}), 0));
    ELSA_RETURN_IF_ERROR(ReceiveControl(*channel, 30s).status().WithContext("waiting for the destination to get ready"));

    // Pre-copy: rounds over the running tree's memory; a page goes over once per content.
    KnownPages known;
    ForwardingSink forward(*channel, known);
    const auto precopy_start = Clock::now();
    uint64_t previous_sent = UINT64_MAX;
    for (int round = 1; round <= options.max_rounds; ++round) {
      MigrationRound r;
      const auto round_start = Clock::now();
      std::vector<page_server::PageHash> hashes(256);
      ELSA_ASSIGN_OR_RETURN(TreeScanStats scan,
                            ScanTreeMemory(info.pid, 256, [&](const uint8_t* pages, size_t count) -> Status {
                              ELSA_ASSIGN_OR_RETURN(size_t sent, forward.PutBatch(pages, count, hashes.data()));
                              r.pages_sent += sent;
                              return Status::Ok();
                            }));
      ELSA_RETURN_IF_ERROR(channel->Flush(120s).WithContext("pre-copy round " + std::to_string(round)));
      r.pages_scanned = scan.pages_present;
      r.seconds = SecondsSince(round_start);
      out.rounds.push_back(r);
      out.bytes_precopy += r.pages_sent * transport::kPageSize;
      const double rate = static_cast<double>(r.pages_sent * transport::kPageSize) / std::max(r.seconds, 1e-3);
      Report(progress, "precopy", "round " + std::to_string(round) + ": " + std::to_string(r.pages_scanned) +
                                   " pages scanned, " + std::to_string(r.pages_sent) + " sent (" +
                                   MiB(r.pages_sent * transport::kPageSize) + ") in " +
                                   std::to_string(r.seconds).substr(0, 5) + " s");
      // What the next round would send is about what this one found changed; stop once that
      // fits in the downtime budget, or when rounds stop shrinking it.
      const double left_seconds = rate > 0 ? static_cast<double>(r.pages_sent * transport::kPageSize) / rate : 0;
      if (round > 1 && (left_seconds * 1000 <= options.max_downtime_ms / 2.0 || r.pages_sent * 10 >= previous_sent * 9))
        break;
      previous_sent = r.pages_sent;
    }
    out.precopy_seconds = SecondsSince(precopy_start);

    // Freeze and dump; CRIU hands the pages to our receiver, which forwards those B lacks.
    ELSA_ASSIGN_OR_RETURN(std::string criu_binary, CriuBinary());
    CriuDriver criu(criu_binary);
    ELSA_ASSIGN_OR_RETURN(std::string criu_version, criu.Version());
    const std::string dump_dir = config_.state_dir + "/run/migrate-" + name;
    ELSA_RETURN_IF_ERROR(RemoveTree(dump_dir));
    ELSA_RETURN_IF_ERROR(MakeDirs(dump_dir, 0700));
    struct RemoveOnExit {
      std::string path;
      ~RemoveOnExit() { (void)RemoveTree(path); }
    } cleanup{dump_dir};
    ELSA_ASSIGN_OR_RETURN(UniqueFd dir_fd, OpenDirectory(dump_dir));
    Manifest manifest = ManifestFor(info, criu_version);
    manifest.id = "migrating";  // B names the checkpoint it commits

    Report(progress, "freeze", "freezing and dumping pid " + std::to_string(info.pid) + "; sending the pages " +
                                out.destination + " lacks");
    const auto freeze = Clock::now();
    const auto wire_before_stop = channel->Stats().payload_bytes_sent;
    ELSA_ASSIGN_OR_RETURN(std::unique_ptr<PageIntake> intake, pages_->StartIntake(dump_dir, &forward));
    CriuDumpRequest dump = intake->DumpRequest(info.pid, dir_fd.get());
    dump.leave_stopped = true;
    Result<CriuOutcome> dumped = SerializedDump(criu, dump, progress);
    Result<page_server::ReceiverStats> received = intake->Finish(dumped.ok());
    if (!dumped.ok()) return dumped.status();  // CRIU thawed the tree itself
    stopped = true;
    if (auto log = ReadFile(dump_dir + "/" + CriuDriver::kDumpLog); log.ok()) lock_table = CriuNetworkLockTable(*log);
    if (!received.ok()) return received.status().WithContext("forwarding the dump's pages");
    out.dump_seconds = SecondsSince(freeze);
    out.pages_dumped = received->pages_present;
    out.pages_deduplicated = received->pages_present - received->pages_new;
    manifest.pages_in_store = true;
    manifest.pages = received->pages_present;
    manifest.pages_new = received->pages_new;
    manifest.dump_seconds = dumped->seconds;

    const auto transfer = Clock::now();
    Report(progress, "transfer", std::to_string(received->pages_new) + " pages changed since pre-copy, " +
                                  std::to_string(out.pages_deduplicated) + " already there; sending the images");
    ELSA_RETURN_IF_ERROR(SendDirectoryFiles(*channel, dump_dir).status().WithContext("sending the images"));
    ELSA_RETURN_IF_ERROR(channel->Flush(300s).WithContext("delivering the images"));
    out.transfer_seconds = SecondsSince(transfer);
    out.bytes_stop = channel->Stats().payload_bytes_sent - wire_before_stop;

    Report(progress, "restore", "restoring on " + out.destination);
    const auto restore = Clock::now();
    ELSA_RETURN_IF_ERROR(channel->Send(peer::EncodeControl(
        "restore", {{"manifest", nlohmann::json::parse(ManifestToJson(manifest))}, {"lazy", options.mode == "hybrid"}}), 0));
    ELSA_ASSIGN_OR_RETURN(peer::Control restored, ReceiveControl(*channel, 300s));
    if (restored.op != "restored") return Status::ProtocolError("expected 'restored', got '" + restored.op + "'");
    out.downtime_seconds = SecondsSince(freeze);
    out.restore_seconds = SecondsSince(restore);
    out.pid = restored.body.value("pid", 0);
    out.checkpoint_id = restored.body.value("checkpoint", std::string());
    out.pages_lazy = restored.body.value("pages_lazy", uint64_t{0});
    ELSA_RETURN_IF_ERROR(channel->Send(peer::EncodeControl("commit"), 0));
    ELSA_ASSIGN_OR_RETURN(peer::Control committed, ReceiveControl(*channel, 60s));
    if (committed.op != "committed") return Status::ProtocolError("expected 'committed', got '" + committed.op + "'");
    return Status::Ok();
  };

  Status st = run();
  if (!st.ok()) {
    if (channel) (void)channel->Send(peer::EncodeControl("abort", {{"message", st.message()}}), 0);
    if (stopped) {
      Status resumed = ResumeStoppedTree(info.pid, lock_table);
      if (!resumed.ok()) std::fprintf(stderr, "elsad: resuming %s: %s\n", name.c_str(), resumed.ToString().c_str());
    }
    ClearBusy(serial);
    return st.WithContext("migration of '" + name + "' to " + out.destination + " failed; it is running here");
  }
  // B runs the session: the stopped copy here ends, and so does CRIU's lock on its connections.
  ::kill(info.pid, SIGKILL);
  ::kill(info.pid, SIGCONT);
  if (!lock_table.empty()) (void)DropCriuNetworkLock(lock_table);
  ForgetAfterExit(serial, 10);
  if (channel) {
    out.wire_bytes = channel->Stats().wire_bytes_sent;
    (void)channel->Close(10s);
  }
  out.total_seconds = SecondsSince(start);
  return out;
}

Status Agent::AcceptMigration(transport::Channel& channel) {
  ELSA_ASSIGN_OR_RETURN(peer::Control begin, ReceiveControl(channel, 30s));
  if (begin.op != "begin") return Status::ProtocolError("a migration starts with 'begin', not '" + begin.op + "'");
  const nlohmann::json session = begin.body.value("session", nlohmann::json::object());
  const std::string name = session.is_object() ? session.value("name", std::string()) : std::string();
  auto refuse = [&](const Status& why) {
    (void)channel.Send(peer::EncodeControl("error", {{"message", why.message()}}), 0);
    (void)channel.Flush(5s);
    return why;
  };
  if (Status valid = ValidateIdentifier("session name", name); !valid.ok()) return refuse(valid);
  if (Status free = ReserveName(name); !free.ok()) return refuse(free);
  bool reserved = true;
  auto release_name = [&] {
    if (reserved) ReleaseName(name);
    reserved = false;
  };
  Result<PendingCheckpoint> pending = store_.Begin(NewCheckpointId(name));
  if (!pending.ok()) {
    release_name();
    return refuse(pending.status());
  }
  auto receive = [&]() -> Result<nlohmann::json> {
    ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeControl("ready"), 0));
    FileReceiver files(pending->dir());
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
      peer::Control& control = std::get<peer::Control>(decoded);
      if (control.op == "abort")
        return Status::ExternalFailure("the source gave up: " + control.body.value("message", std::string()));
      if (control.op != "restore") return Status::ProtocolError("unexpected '" + control.op + "' during a migration");
      ELSA_RETURN_IF_ERROR(files.CheckComplete());
      std::fprintf(stderr, "elsad: migration of %s: %llu pages received (%llu new), %llu bytes of images\n",
                   name.c_str(), static_cast<unsigned long long>(pages), static_cast<unsigned long long>(fresh),
                   static_cast<unsigned long long>(files.bytes()));
      return std::move(control.body);
    }
  };
  Result<nlohmann::json> restore_request = receive();
  if (!restore_request.ok()) {
    release_name();
    return refuse(restore_request.status());
  }
  // The images and every page they name are here: commit them as a checkpoint of ours.
  auto commit = [&]() -> Result<Manifest> {
    const nlohmann::json& m = (*restore_request)["manifest"];
    ELSA_ASSIGN_OR_RETURN(Manifest manifest, ManifestFromJson(m.is_object() ? m.dump() : std::string("{}")));
    if (manifest.session_name != name) return Status::ProtocolError("the manifest is for another session");
    manifest.id = pending->id();
    manifest.pages_in_store = true;
    ELSA_RETURN_IF_ERROR(pages_->VerifyPages(pending->dir(), false).WithContext("checking the migrated pages"));
    ELSA_RETURN_IF_ERROR(pages_->Sync());
    return pending->Commit(std::move(manifest), false);
  };
  Result<Manifest> committed = commit();
  release_name();
  if (!committed.ok()) return refuse(committed.status());
  RestoreOptions restore_options;
  restore_options.name = name;
  restore_options.lazy = restore_request->value("lazy", false);
  Result<RestoreReport> restored = Restore(committed->id, restore_options, nullptr);
  if (!restored.ok()) return refuse(restored.status());
  ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeControl("restored", {{"pid", restored->session.pid},
                                                                      {"checkpoint", committed->id},
                                                                      {"pages_lazy", restored->pages_lazy},
                                                                      {"restore_seconds", restored->total_seconds}}),
                                    0));
  // Ours only once the source says so; otherwise it resumes its own copy and ours must go.
  Result<peer::Control> verdict = ReceiveControl(channel, 60s);
  if (!verdict.ok() || verdict->op != "commit") {
    (void)Stop(name, 5);
    return verdict.ok() ? Status::ExternalFailure("the source took the session back after it was restored here")
                        : verdict.status().WithContext("no commit from the source; the restored copy was stopped");
  }
  ELSA_RETURN_IF_ERROR(channel.Send(peer::EncodeControl("committed"), 0));
  return channel.Flush(10s);
}

}  // namespace elsa
