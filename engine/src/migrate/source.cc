#include "migrate/source.h"

#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <future>
#include <tuple>
#include <mutex>
#include <thread>

#include "elsa/page_server/criu_stats.h"
#include "elsa/stopwatch.h"
#include "migrate/frozen_copy.h"
#include "migrate/image_files.h"
#include "migrate/peer_reader.h"
#include "migrate/postcopy.h"
#include "migrate/protocol.h"
#include "migrate/steps.h"
#include "session/tree_memory.h"
#include "store/checkpoint_pages.h"

namespace elsa {
namespace {

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

MigrationSource::MigrationSource(MigrationHost& host, std::string name, MigrateOptions options, ProgressFn progress)
    : host_(host),
      name_(std::move(name)),
      options_(std::move(options)),
      progress_(std::move(progress)),
      log_(host.log().With("session", name_).With("op", "migrate")),
      stopped_(std::make_unique<StoppedTree>(log_, FrozenCopyPath(host.config().state_dir, name_))) {}

MigrationSource::~MigrationSource() = default;

Result<MigrateReport> MigrationSource::Run() {
  ELSA_RETURN_IF_ERROR(ValidateIdentifier("session name", name_));
  if (!host_.config().PeerAuthConfigured())
    return Status::FailedPrecondition(
        "this agent cannot authenticate to other agents: start elsad with --peer-cert, --peer-key and --peer-ca "
        "(or, deprecated, --peer-secret-file)");
  ELSA_ASSIGN_OR_RETURN(destination_, peer::ParseHostPort(options_.to));
  ELSA_ASSIGN_OR_RETURN(SessionClaim claim, SessionClaim::Take(host_, name_));
  claim_.emplace(std::move(claim));
  out_.session = name_;
  out_.destination = destination_.first + ":" + std::to_string(destination_.second);
  out_.address = destination_.first;
  out_.mode = options_.mode;

  if (Status st = Steps(); !st.ok()) {
    if (!restore_sent_) return RollBack(st);
    pusher_.reset();  // its reader would take B's answer
    Result<bool> there = AskWhereItRuns(st, Clock::now() + 3 * std::chrono::milliseconds(host_.config().peer_timeout_ms));
    if (!there.ok()) return LeaveInDoubt(st, there.status());
    if (!*there) return RollBack(st);
    log_.Warning("the migration failed after the restore (" + st.ToString() + "), but " + out_.destination +
                 " holds every page and runs the session: it lives there now");
    Report(progress_, "running", "on " + out_.destination + ", which kept it after: " + st.message());
  }
  Finish();
  return out_;
}


Result<bool> MigrationSource::AskWhereItRuns(const Status& why, Clock::time_point deadline) {
  // On the conversation itself, if it still works: B answers `abort` with `committed` (it keeps
  // a complete copy) or `error` (it has ended its copy, or never ran one).
  if (channel_ && channel_->Send(peer::EncodeControl(peer::Abort{why.message()}), 0).ok()) {
    for (;;) {
      Result<peer::Control> answer = ReceiveControl(*channel_, 10s);
      if (!answer.ok()) break;
      if (std::holds_alternative<peer::Committed>(*answer)) return true;
      if (std::holds_alternative<peer::Error>(*answer)) return false;
    }
  }
  Status last = Status::Ok();
  for (int attempt = 1;; ++attempt) {
    Result<peer::Outcome> outcome =
        AskWhereSessionRuns(host_.config(), destination_, name_, frozen_record_.commit_sent);
    if (outcome.ok() && *outcome != peer::Outcome::kUndecided) return *outcome == peer::Outcome::kKept;
    last = outcome.ok() ? Status::Unavailable(out_.destination + " is still deciding") : outcome.status();
    Report(progress_, "resolve", "asking " + out_.destination + " whether it runs the session (attempt " +
                                     std::to_string(attempt) + "): " + last.message());
    if (Clock::now() + 1s > deadline) return last;
    std::this_thread::sleep_for(1s);
  }
}

Status MigrationSource::LeaveInDoubt(const Status& why, const Status& asking) {
  struct InDoubt {
    SessionClaim claim;
    std::unique_ptr<StoppedTree> stopped;
  };
  auto held = std::make_shared<InDoubt>(InDoubt{std::move(*claim_), std::move(stopped_)});
  claim_.reset();
  const pid_t pid = held->claim.info().pid;
  log_.Error("cannot tell whether " + out_.destination + " runs the session (" + asking.ToString() +
             "): it stays frozen here (pid " + std::to_string(pid) + ") until " + out_.destination + " answers");
  host_.ResolveLater([held, config = host_.config(), destination = destination_, name = name_,
                      commit_sent = frozen_record_.commit_sent, log = log_](const std::atomic<bool>& stop) {
    std::optional<bool> there = AskUntilKnown(config, destination, name, commit_sent, stop);
    if (!there) {
      log.Error("the agent stops before the destination could be asked: the session stays frozen here, and the "
                "next agent on this state directory asks again");
      held->stopped->LeaveStopped();
    } else if (*there) {
      log.Info("the destination runs the session: its frozen copy here ends");
      held->stopped->End();
      held->claim.Forget(10);
    } else {
      log.Info("the destination has no copy of the session: it runs here again");
      if (Status resumed = held->stopped->Resume(); !resumed.ok()) log.Error("resuming: " + resumed.ToString());
    }
  });
  return why.WithContext("migration of '" + name_ + "' to " + out_.destination + " failed after the restore, and " +
                         out_.destination + " cannot be asked whether it runs the session (" + asking.message() +
                         "): it stays frozen here, not running in two places, until " + out_.destination +
                         " answers (the agent keeps asking)");
}

// Every way out of a step is a Status, so the rollback in Run() runs whatever went wrong.
Status MigrationSource::Steps() {
  return RunSteps(this, {&MigrationSource::Connect, &MigrationSource::Precopy, &MigrationSource::PrepareDump,
                         &MigrationSource::FreezeGate, &MigrationSource::Freeze, &MigrationSource::ShipImages,
                         &MigrationSource::AwaitRestored, &MigrationSource::PushMemory, &MigrationSource::Commit});
}

Status MigrationSource::Connect() {
  ELSA_ASSIGN_OR_RETURN(transport::Backend backend, transport::ParseBackend(host_.config().peer_backend));
  ELSA_ASSIGN_OR_RETURN(auto transport, transport::MakeTransport(backend));
  Report(progress_, "connect", "to " + out_.destination);
  ELSA_ASSIGN_OR_RETURN(channel_, transport->Connect({destination_.first, destination_.second},
                                                     host_.config().PeerChannelOptions()));
  const SessionInfo& info = claim_->info();
  peer::Begin begin;
  begin.session = {info.name, info.command, info.workdir, info.started_at};
  begin.mode = options_.mode;
  begin.memory_bytes = TreeResidentBytes(info.pid);
  ELSA_RETURN_IF_ERROR(channel_->Send(peer::EncodeControl(begin), 0));
  forward_ = std::make_unique<ForwardingSink>(*channel_, known_);
  return peer::Expect<peer::Ready>(ReceiveControl(*channel_, 30s), "before the destination was ready")
      .status()
      .WithContext("waiting for the destination to get ready");
}

Status MigrationSource::Precopy() {
  if (!HasPrecopyRounds(options_.mode)) return Status::Ok();
  const auto precopy_start = Clock::now();
  const pid_t pid = claim_->info().pid;
  uint64_t previous_sent = UINT64_MAX;
  std::vector<page_server::PageHash> hashes(256);
  for (int round = 1; round <= options_.max_rounds; ++round) {
    MigrationRound r;
    const auto round_start = Clock::now();
    ELSA_ASSIGN_OR_RETURN(TreeScanStats scan,
                          ScanTreeMemory(pid, 256, [&](const uint8_t* pages, size_t count) -> Status {
                            ELSA_ASSIGN_OR_RETURN(size_t sent, forward_->PutBatch(pages, count, hashes.data()));
                            r.pages_sent += sent;
                            return Status::Ok();
                          }));
    ELSA_RETURN_IF_ERROR(channel_->Flush(120s).WithContext("pre-copy round " + std::to_string(round)));
    r.pages_scanned = scan.pages_present;
    r.seconds = SecondsSince(round_start);
    out_.rounds.push_back(r);
    const uint64_t sent_bytes = r.pages_sent * transport::kPageSize;
    out_.bytes_precopy += sent_bytes;
    const double rate = static_cast<double>(sent_bytes) / std::max(r.seconds, 1e-3);
    // What changed during this round is what the next one sends: the dirty rate.
    const double dirty_rate = round > 1 ? rate : 0;
    const double left_seconds = rate > 0 ? static_cast<double>(sent_bytes) / rate : 0;
    ProgressEvent event;
    event.phase = "precopy";
    event.round = round;
    event.bytes_done = sent_bytes;
    event.bytes_total = r.pages_scanned * transport::kPageSize;
    event.pages = r.pages_sent;
    event.rate_bytes_per_s = rate;
    event.eta_seconds = left_seconds;
    event.seconds = r.seconds;
    event.detail = "round " + std::to_string(round) + ": " + MiB(r.pages_scanned * transport::kPageSize) +
                   " scanned, " + MiB(sent_bytes) + " sent in " + Fixed(r.seconds, 2) + " s (" +
                   MiB(static_cast<uint64_t>(rate)) + "/s" +
                   (round > 1 ? ", dirtied " + MiB(static_cast<uint64_t>(dirty_rate)) + "/s" : std::string()) +
                   "); next round ~" + Fixed(left_seconds, 2) + " s";
    Report(progress_, std::move(event));
    // Stop once what is left fits in the downtime budget (post-copy: it costs no downtime but
    // every page left is one the session may wait for on the destination), or when rounds stop
    // shrinking it.
    if (round > 1 && (left_seconds * 1000 <= options_.max_downtime_ms / 2.0 || r.pages_sent * 10 >= previous_sent * 9))
      break;
    previous_sent = r.pages_sent;
  }
  out_.precopy_seconds = SecondsSince(precopy_start);
  return Status::Ok();
}

Status MigrationSource::PrepareDump() {
  ELSA_ASSIGN_OR_RETURN(CriuDriver criu, host_.Criu());
  criu_.emplace(std::move(criu));
  ELSA_ASSIGN_OR_RETURN(std::string criu_version, criu_->Version());
  const std::string dir = host_.config().state_dir + "/run/migrate-" + name_;
  ELSA_ASSIGN_OR_RETURN(dump_dir_, ScopedPath::MakeDirectory(dir));
  ELSA_ASSIGN_OR_RETURN(dump_dir_fd_, OpenDirectory(dump_dir_.path()));
  criu_conf_ = ScopedPath(dir + ".criu.conf");
  // A lazy dump serves the tree's pages on its end of a private connection (nothing listens for
  // a stranger to reach first), named in a config file since RPC cannot hand it over; made now,
  // not between the freeze gate and the freeze.
  if (IsPostcopy(options_.mode)) {
    ELSA_ASSIGN_OR_RETURN(lazy_dump_, page_server::ConnectedLoopbackPair());
    ELSA_RETURN_IF_ERROR(WriteFileAtomic(criu_conf_.path(), LazyDumpConfig(lazy_dump_.theirs.get())));
  }
  manifest_ = host_.ManifestFor(claim_->info(), criu_version);
  manifest_.id = "migrating";  // B names the checkpoint it commits
  return Status::Ok();
}

Status MigrationSource::FreezeGate() {
  if (!options_.before_freeze) return Status::Ok();
  Report(progress_, "gate", "pre-copy done; waiting for the go to freeze");
  return options_.before_freeze();
}

Status MigrationSource::Freeze() {
  // On disk before the tree stops, so that an agent dying from here on leaves a copy the next
  // one can settle (frozen_copy.h).
  FrozenCopy& record = frozen_record_;
  record.session = name_;
  record.pid = claim_->info().pid;
  record.start_ticks = ProcessStartTicks(record.pid);
  std::tie(record.host, record.port) = destination_;
  ELSA_RETURN_IF_ERROR(RecordFrozenCopy(host_.config().state_dir, record));
  frozen_at_ = Clock::now();
  wire_before_stop_ = channel_->Stats().payload_bytes_sent;
  Status frozen = IsPostcopy(options_.mode) ? FreezeLazily() : FreezeWithPages();
  if (!stopped_->held()) {
    (void)::unlink(FrozenCopyPath(host_.config().state_dir, name_).c_str());  // CRIU thawed the tree itself
  } else {
    record.lock_table = stopped_->network_lock_table();
    if (Status st = RecordFrozenCopy(host_.config().state_dir, record); !st.ok())
      log_.Warning("recording the frozen copy's network lock: " + st.ToString());
  }
  ELSA_RETURN_IF_ERROR(frozen);
  out_.dump_seconds = SecondsSince(frozen_at_);
  if (IsPostcopy(options_.mode)) {
    ELSA_ASSIGN_OR_RETURN(LazyPlan plan, LazyPlan::FromImages(dump_dir_.path()));
    plan_.emplace(std::move(plan));
    out_.pages_lazy = plan_->pages();
    out_.pages_in_images = plan_->pages_in_images();
  }
  return Status::Ok();
}

// CRIU hands the pages to our receiver, which forwards those B lacks.
Status MigrationSource::FreezeWithPages() {
  const pid_t pid = claim_->info().pid;
  Report(progress_, "freeze", "freezing and dumping pid " + std::to_string(pid) + "; sending the pages " +
                                  out_.destination + " lacks");
  ELSA_ASSIGN_OR_RETURN(std::unique_ptr<PageIntake> intake, host_.pages().StartIntake(dump_dir_.path(), forward_.get()));
  CriuDumpRequest dump = intake->DumpRequest(pid, dump_dir_fd_.get());
  dump.leave_stopped = true;
  Result<CriuOutcome> dumped = host_.SerializedDump(*criu_, dump, progress_, {});
  Result<page_server::ReceiverStats> received = intake->Finish(dumped.ok());
  if (!dumped.ok()) return dumped.status();  // CRIU thawed the tree itself
  stopped_->Take(pid, CriuNetworkLockTableOf(dump_dir_.path()));
  if (!received.ok()) return received.status().WithContext("forwarding the dump's pages");
  out_.pages_dumped = received->pages_present;
  out_.pages_deduplicated = received->pages_present - received->pages_new;
  manifest_.pages_in_store = true;
  manifest_.pages = received->pages_present;
  manifest_.pages_new = received->pages_new;
  manifest_.dump_seconds = dumped->seconds;
  // CRIU's own measure of stopping the tree. (A lazy dump's statistics are useless: CRIU's
  // lazy-pages server resets them before they are written.)
  if (auto stats = page_server::ReadCriuDumpStats(dump_dir_.path()); stats.ok())
    out_.freeze_seconds = stats->freezing_seconds;
  return Status::Ok();
}

// The memory stays in the stopped tree: CRIU writes everything else, says "status-ready" and
// waits for a lazy-pages client, which we are, asking for nothing.
Status MigrationSource::FreezeLazily() {
  const pid_t pid = claim_->info().pid;
  Report(progress_, "freeze", "freezing and dumping pid " + std::to_string(pid) +
                                  " without its memory, which follows the session to " + out_.destination);
  CriuDumpRequest dump;
  dump.pid = pid;
  dump.images_dir_fd = dump.work_dir_fd = dump_dir_fd_.get();
  dump.leave_stopped = true;
  dump.lazy_pages_fd = lazy_dump_.theirs.get();
  dump.config_file = criu_conf_.path();
  // Woken by CRIU's "status-ready" (images written) or by the dump ending (it failed).
  std::mutex mu;
  std::condition_variable changed;
  bool images_written = false, dump_over = false;
  auto dumping = std::async(std::launch::async, [&] {
    Result<CriuOutcome> outcome = host_.SerializedDump(*criu_, dump, progress_, [&](const std::string& event) {
      if (event != "status-ready") return;
      std::lock_guard lock(mu);
      images_written = true;
      changed.notify_all();
    });
    std::lock_guard lock(mu);
    dump_over = true;
    changed.notify_all();
    return outcome;
  });
  bool ready = false;
  {
    std::unique_lock lock(mu);
    changed.wait(lock, [&] { return images_written || dump_over; });
    ready = images_written;
  }
  Status closed = ready ? page_server::CloseLazyDump(lazy_dump_.ours.get(), 30s) : Status::Ok();
  Result<CriuOutcome> dumped = dumping.get();
  lazy_dump_ = {};
  if (!dumped.ok()) return dumped.status();  // CRIU thawed the tree itself
  stopped_->Take(pid, CriuNetworkLockTableOf(dump_dir_.path()));
  manifest_.dump_seconds = dumped->seconds;
  return closed;
}

Status MigrationSource::ShipImages() {
  const auto transfer = Clock::now();
  ProgressEvent event;
  event.phase = "transfer";
  if (plan_) {
    event.pages = plan_->pages();
    event.detail = "sending the images; " + MiB(plan_->pages() * transport::kPageSize) + " of memory follows";
  } else {
    event.pages = out_.pages_dumped - out_.pages_deduplicated;
    event.detail = std::to_string(out_.pages_dumped - out_.pages_deduplicated) + " pages changed since pre-copy, " +
                   std::to_string(out_.pages_deduplicated) + " already there; sending the images";
  }
  Report(progress_, std::move(event));
  ELSA_RETURN_IF_ERROR(SendDirectoryFiles(*channel_, dump_dir_.path()).status().WithContext("sending the images"));
  ELSA_RETURN_IF_ERROR(channel_->Flush(300s).WithContext("delivering the images"));
  out_.transfer_seconds = SecondsSince(transfer);
  out_.bytes_stop = channel_->Stats().payload_bytes_sent - wire_before_stop_;
  return Status::Ok();
}

Status MigrationSource::AwaitRestored() {
  Report(progress_, "restore", "restoring on " + out_.destination);
  const auto restore = Clock::now();
  // precopy: B restores lazily too, but from its own store: A is not needed once it runs.
  restore_sent_ = true;  // from now on B may hold the whole session: a failure is settled by asking
  ELSA_RETURN_IF_ERROR(channel_->Send(peer::EncodeControl(peer::Restore{manifest_, /*lazy=*/true}), 0));
  if (host_.config().test_fault == "die-after-restore-sent" && channel_->Flush(30s).ok()) ::raise(SIGKILL);
  // Made before `restored` can come: B's session may fault before its restore is even reported.
  if (plan_)
    pusher_ = std::make_unique<PostcopyPusher>(*channel_, *plan_, HostPidsByVirtualPid(claim_->info().pid), known_);
  ELSA_ASSIGN_OR_RETURN(peer::Restored restored,
                        peer::Expect<peer::Restored>(pusher_ ? pusher_->AwaitControl(300s) : ReceiveControl(*channel_, 300s),
                                                     "while the destination restored"));
  out_.downtime_seconds = SecondsSince(frozen_at_);
  out_.restore_seconds = SecondsSince(restore);
  out_.resume_seconds = restored.resume_seconds;
  out_.pid = restored.pid;
  out_.checkpoint_id = restored.checkpoint;
  if (!plan_) out_.pages_lazy = restored.pages_lazy;
  Report(progress_, "running",
         "on " + out_.destination + " after " + Fixed(out_.downtime_seconds * 1000, 0) + " ms of downtime");
  return Status::Ok();
}

Status MigrationSource::PushMemory() {
  if (!pusher_) return Status::Ok();
  const auto pushing = Clock::now();
  const auto before = channel_->Stats().payload_bytes_sent;
  auto report_push = [&](uint64_t done, uint64_t total) {
    const double seconds = SecondsSince(pushing);
    const double rate = static_cast<double>(done * transport::kPageSize) / std::max(seconds, 1e-3);
    const double eta = rate > 0 ? static_cast<double>((total - done) * transport::kPageSize) / rate : 0;
    ProgressEvent event;
    event.phase = "postcopy";
    event.bytes_done = done * transport::kPageSize;
    event.bytes_total = total * transport::kPageSize;
    event.pages = done;
    event.rate_bytes_per_s = rate;
    event.eta_seconds = eta;
    event.detail = MiB(done * transport::kPageSize) + " of " + MiB(total * transport::kPageSize) + " (" +
                   std::to_string(total ? done * 100 / total : 100) + "%), " + MiB(static_cast<uint64_t>(rate)) +
                   "/s, ETA " + Fixed(eta, 1) + " s";
    Report(progress_, std::move(event));
  };
  ELSA_ASSIGN_OR_RETURN(PushStats pushed, pusher_->Push(std::chrono::milliseconds(host_.config().peer_timeout_ms),
                                                        report_push));
  pusher_.reset();  // its reader would take the destination's `committed`
  out_.postcopy_seconds = SecondsSince(pushing);
  out_.bytes_postcopy = channel_->Stats().payload_bytes_sent - before;
  out_.pages_postcopy = pushed.pages_sent + pushed.pages_faulted;
  out_.pages_faulted = pushed.pages_faulted;
  out_.pages_deduplicated = pushed.pages_referenced;
  out_.pages_dumped = plan_->pages();
  return Status::Ok();
}

Status MigrationSource::Commit() {
  Report(progress_, "commit", "asking " + out_.destination + " to keep the session");
  const std::string& fault = host_.config().test_fault;
  if (fault == "hang-before-commit") std::this_thread::sleep_for(120s);
  // From `commit` on, B may make its copy outlive its agent: its agent gone no longer means its
  // copy is (AskWhereSessionRuns). On disk too, for the next agent here.
  frozen_record_.commit_sent = true;
  ELSA_RETURN_IF_ERROR(RecordFrozenCopy(host_.config().state_dir, frozen_record_).WithContext("recording the commit"));
  ELSA_RETURN_IF_ERROR(channel_->Send(peer::EncodeControl(peer::Commit{}), 0));
  ELSA_RETURN_IF_ERROR(peer::Expect<peer::Committed>(ReceiveControl(*channel_, 60s), "after the commit").status());
  if (fault == "die-after-committed") ::raise(SIGKILL);  // as `kill -9` would, with the frozen copy not yet ended
  if (fault == "lose-committed") {
    (void)channel_->Close(1s);
    channel_.reset();
    return Status::PeerClosed("(--test-fault) the connection broke before the destination's `committed` arrived");
  }
  return Status::Ok();
}

void MigrationSource::Finish() {
  // B runs the session and holds all of it: the stopped copy here ends, and so does CRIU's
  // lock on its connections.
  stopped_->End();
  claim_->Forget(10);
  if (channel_) {
    out_.wire_bytes = channel_->Stats().wire_bytes_sent;
    (void)channel_->Close(10s);
  }
  out_.total_seconds = SecondsSince(start_);
}

Status MigrationSource::RollBack(const Status& why) {
  rolled_back_ = true;
  pusher_.reset();
  if (channel_) (void)channel_->Send(peer::EncodeControl(peer::Abort{why.message()}), 0);
  if (Status resumed = stopped_->Resume(); !resumed.ok()) log_.Error("resuming the session: " + resumed.ToString());
  claim_.reset();
  return why.WithContext("migration of '" + name_ + "' to " + out_.destination + " failed; it is running here");
}

}  // namespace elsa
