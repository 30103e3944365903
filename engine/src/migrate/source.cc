// The source's side of a live migration (peer_protocol.h has the conversation; the destination's
// side is agent_accept.cc):
//   precopy:  rounds while the session runs, then freeze + dump with the pages the destination
//             lacks forwarded as CRIU hands them over, images shipped, restore on the destination;
//   postcopy: freeze + lazy dump (no memory), images shipped, restore on the destination, then
//             the memory pushed from the stopped tree while the session runs there;
//   hybrid:   pre-copy rounds, then post-copy for what changed since.
// The source's stopped copy ends only when the destination runs the session and holds all of
// its memory; until then every failure resumes it here.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <future>

#include "agent/agent_progress.h"
#include "store/checkpoint_pages.h"
#include "elsa/engine/agent.h"
#include "elsa/engine/session_process.h"
#include "elsa/file_util.h"
#include "elsa/page_server/criu_stats.h"
#include "migrate/channel_io.h"
#include "migrate/protocol.h"
#include "migrate/postcopy.h"
#include "session/tree_memory.h"

namespace elsa {
namespace {

using Clock = AgentClock;
using namespace std::chrono_literals;

std::string MiB(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

std::string Fixed(double value, int decimals) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

}  // namespace

Result<MigrateReport> Agent::Migrate(const std::string& name, const MigrateOptions& options,
                                     const ProgressFn& progress) {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name));
  if (options.mode != "precopy" && options.mode != "postcopy" && options.mode != "hybrid")
    return Status::InvalidArgument("mode '" + options.mode + "': precopy, postcopy or hybrid");
  if (config_.peer_secret.empty())
    return Status::FailedPrecondition("this agent has no peer secret: start elsad with --peer-secret-file");
  ELSA_ASSIGN_OR_RETURN(auto destination, peer::ParseHostPort(options.to));
  const bool precopy_rounds = options.mode != "postcopy";
  const bool postcopy = options.mode != "precopy";
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
    const auto patience = std::chrono::milliseconds(config_.peer_timeout_ms);
    Report(progress, "connect", "to " + out.destination);
    ELSA_ASSIGN_OR_RETURN(channel, transport->Connect({destination.first, destination.second}, channel_options));
    const uint64_t memory_bytes = TreeResidentBytes(info.pid);
    nlohmann::json session = {{"name", info.name}, {"command", info.command}, {"workdir", info.workdir},
                              {"started_at", info.started_at}};
    ELSA_RETURN_IF_ERROR(channel->Send(
        peer::EncodeControl("begin", {{"session", session}, {"mode", options.mode}, {"memory_bytes", memory_bytes}}), 0));
    ELSA_RETURN_IF_ERROR(ReceiveControl(*channel, 30s).status().WithContext("waiting for the destination to get ready"));

    // Pre-copy: rounds over the running tree's memory; a page goes over once per content.
    KnownPages known;
    ForwardingSink forward(*channel, known);
    const auto precopy_start = Clock::now();
    uint64_t previous_sent = UINT64_MAX;
    for (int round = 1; precopy_rounds && round <= options.max_rounds; ++round) {
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
      // What changed during this round is what the next one sends: the dirty rate.
      const double dirty_rate = round > 1 ? rate : 0;
      const double left_seconds = rate > 0 ? static_cast<double>(r.pages_sent * transport::kPageSize) / rate : 0;
      Report(progress, "precopy",
             "round " + std::to_string(round) + ": " + MiB(r.pages_scanned * transport::kPageSize) + " scanned, " +
                 MiB(r.pages_sent * transport::kPageSize) + " sent in " + Fixed(r.seconds, 2) + " s (" +
                 MiB(static_cast<uint64_t>(rate)) + "/s" +
                 (round > 1 ? ", dirtied " + MiB(static_cast<uint64_t>(dirty_rate)) + "/s" : std::string()) +
                 "); next round ~" + Fixed(left_seconds, 2) + " s");
      // Stop once what is left fits in the downtime budget (post-copy: it costs no downtime
      // but every page left is one the session may wait for on the destination), or when
      // rounds stop shrinking it.
      if (round > 1 && (left_seconds * 1000 <= options.max_downtime_ms / 2.0 || r.pages_sent * 10 >= previous_sent * 9))
        break;
      previous_sent = r.pages_sent;
    }
    out.precopy_seconds = SecondsSince(precopy_start);

    ELSA_ASSIGN_OR_RETURN(std::string criu_binary, CriuBinary());
    CriuDriver criu(criu_binary);
    ELSA_ASSIGN_OR_RETURN(std::string criu_version, criu.Version());
    const std::string dump_dir = config_.state_dir + "/run/migrate-" + name;
    const std::string criu_conf = dump_dir + ".criu.conf";
    ELSA_RETURN_IF_ERROR(RemoveTree(dump_dir));
    ELSA_RETURN_IF_ERROR(MakeDirs(dump_dir, 0700));
    struct RemoveOnExit {
      std::vector<std::string> paths;
      ~RemoveOnExit() {
        for (const auto& p : paths) (void)RemoveTree(p);
      }
    } cleanup{{dump_dir, criu_conf}};
    ELSA_ASSIGN_OR_RETURN(UniqueFd dir_fd, OpenDirectory(dump_dir));
    Manifest manifest = ManifestFor(info, criu_version);
    manifest.id = "migrating";  // B names the checkpoint it commits

    if (options.before_freeze) {
      Report(progress, "gate", "pre-copy done; waiting for the go to freeze");
      ELSA_RETURN_IF_ERROR(options.before_freeze());
    }
    const auto freeze = Clock::now();
    const auto wire_before_stop = channel->Stats().payload_bytes_sent;
    Result<CriuOutcome> dumped = Status::Internal("not dumped");
    if (!postcopy) {
      // CRIU hands the pages to our receiver, which forwards those B lacks.
      Report(progress, "freeze", "freezing and dumping pid " + std::to_string(info.pid) + "; sending the pages " +
                                  out.destination + " lacks");
      ELSA_ASSIGN_OR_RETURN(std::unique_ptr<PageIntake> intake, pages_->StartIntake(dump_dir, &forward));
      CriuDumpRequest dump = intake->DumpRequest(info.pid, dir_fd.get());
      dump.leave_stopped = true;
      dumped = SerializedDump(criu, dump, progress);
      Result<page_server::ReceiverStats> received = intake->Finish(dumped.ok());
      if (!dumped.ok()) return dumped.status();  // CRIU thawed the tree itself
      stopped = true;
      if (!received.ok()) return received.status().WithContext("forwarding the dump's pages");
      out.pages_dumped = received->pages_present;
      out.pages_deduplicated = received->pages_present - received->pages_new;
      manifest.pages_in_store = true;
      manifest.pages = received->pages_present;
      manifest.pages_new = received->pages_new;
      // CRIU's own measure of stopping the tree. (A lazy dump's statistics are useless: CRIU's
      // lazy-pages server resets them before they are written.)
      if (auto stats = page_server::ReadCriuDumpStats(dump_dir); stats.ok()) out.freeze_seconds = stats->freezing_seconds;
    } else {
      // The memory stays in the stopped tree: CRIU writes everything else, says "status-ready"
      // and waits for a lazy-pages client, which we are, asking for nothing.
      Report(progress, "freeze", "freezing and dumping pid " + std::to_string(info.pid) +
                                  " without its memory, which follows the session to " + out.destination);
      ELSA_ASSIGN_OR_RETURN(uint16_t lazy_port, page_server::FreeLoopbackPort());
      ELSA_RETURN_IF_ERROR(WriteFileAtomic(criu_conf, "address 127.0.0.1\n"));
      CriuDumpRequest dump;
      dump.pid = info.pid;
      dump.images_dir_fd = dump.work_dir_fd = dir_fd.get();
      dump.leave_stopped = true;
      dump.lazy_pages_port = lazy_port;
      dump.config_file = criu_conf;
      std::promise<void> ready;
      std::future<void> images_written = ready.get_future();
      bool signalled = false;
      auto dumping = std::async(std::launch::async, [&] {
        return SerializedDump(criu, dump, progress, [&](const std::string& event) {
          if (event == "status-ready" && !signalled) {
            signalled = true;
            ready.set_value();
          }
        });
      });
      while (images_written.wait_for(5ms) != std::future_status::ready &&
             dumping.wait_for(0ms) != std::future_status::ready) {
      }
      Status closed = Status::Ok();
      if (images_written.wait_for(0ms) == std::future_status::ready) closed = page_server::CloseLazyDumpServer(lazy_port, 30s);
      dumped = dumping.get();
      if (!dumped.ok()) return dumped.status();  // CRIU thawed the tree itself
      stopped = true;
      ELSA_RETURN_IF_ERROR(closed);
    }
    if (auto log = ReadFile(dump_dir + "/" + CriuDriver::kDumpLog); log.ok()) lock_table = CriuNetworkLockTable(*log);
    out.dump_seconds = SecondsSince(freeze);
    manifest.dump_seconds = dumped->seconds;

    std::optional<LazyPlan> plan;
    if (postcopy) {
      ELSA_ASSIGN_OR_RETURN(plan, LazyPlan::FromImages(dump_dir));
      out.pages_lazy = plan->pages();
    }
    const auto transfer = Clock::now();
    Report(progress, "transfer",
           postcopy ? "sending the images; " + MiB(plan->pages() * transport::kPageSize) + " of memory follows"
                    : std::to_string(out.pages_dumped - out.pages_deduplicated) + " pages changed since pre-copy, " +
                          std::to_string(out.pages_deduplicated) + " already there; sending the images");
    ELSA_RETURN_IF_ERROR(SendDirectoryFiles(*channel, dump_dir).status().WithContext("sending the images"));
    ELSA_RETURN_IF_ERROR(channel->Flush(300s).WithContext("delivering the images"));
    out.transfer_seconds = SecondsSince(transfer);
    out.bytes_stop = channel->Stats().payload_bytes_sent - wire_before_stop;

    Report(progress, "restore", "restoring on " + out.destination);
    const auto restore = Clock::now();
    // precopy: B restores lazily too, but from its own store: A is not needed once it runs.
    ELSA_RETURN_IF_ERROR(channel->Send(
        peer::EncodeControl("restore", {{"manifest", nlohmann::json::parse(ManifestToJson(manifest))}, {"lazy", true}}),
        0));
    std::unique_ptr<PostcopyPusher> pusher;
    if (postcopy) pusher = std::make_unique<PostcopyPusher>(*channel, *plan, HostPidsByVirtualPid(info.pid), known);
    ELSA_ASSIGN_OR_RETURN(peer::Control restored, pusher ? pusher->AwaitControl(300s) : ReceiveControl(*channel, 300s));
    if (restored.op != "restored") return Status::ProtocolError("expected 'restored', got '" + restored.op + "'");
    out.downtime_seconds = SecondsSince(freeze);
    out.restore_seconds = SecondsSince(restore);
    out.resume_seconds = restored.body.value("resume_seconds", 0.0);
    out.pid = restored.body.value("pid", 0);
    out.checkpoint_id = restored.body.value("checkpoint", std::string());
    if (!postcopy) out.pages_lazy = restored.body.value("pages_lazy", uint64_t{0});
    Report(progress, "running", "on " + out.destination + " after " + Fixed(out.downtime_seconds * 1000, 0) +
                                    " ms of downtime");

    if (pusher) {
      const auto pushing = Clock::now();
      const auto before = channel->Stats().payload_bytes_sent;
      auto report_push = [&](uint64_t done, uint64_t total) {
        const double seconds = SecondsSince(pushing);
        const double rate = static_cast<double>(done * transport::kPageSize) / std::max(seconds, 1e-3);
        const double eta = rate > 0 ? static_cast<double>((total - done) * transport::kPageSize) / rate : 0;
        Report(progress, "postcopy", MiB(done * transport::kPageSize) + " of " + MiB(total * transport::kPageSize) +
                                         " (" + std::to_string(total ? done * 100 / total : 100) + "%), " +
                                         MiB(static_cast<uint64_t>(rate)) + "/s, ETA " + Fixed(eta, 1) + " s");
      };
      ELSA_ASSIGN_OR_RETURN(PushStats pushed, pusher->Push(patience, report_push));
      pusher.reset();  // its reader would take the destination's `committed`
      out.postcopy_seconds = SecondsSince(pushing);
      out.bytes_postcopy = channel->Stats().payload_bytes_sent - before;
      out.pages_postcopy = pushed.pages_sent + pushed.pages_faulted;
      out.pages_faulted = pushed.pages_faulted;
      out.pages_deduplicated = pushed.pages_referenced;
      out.pages_dumped = plan->pages();
    }
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
  // B runs the session and holds all of it: the stopped copy here ends, and so does CRIU's
  // lock on its connections.
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

}  // namespace elsa
