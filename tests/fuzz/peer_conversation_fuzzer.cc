// The destination's half of a migration (MigrationDestination, what a PeerServer runs for an
// authenticated peer) fed any sequence of messages: control messages, file chunks, page refs and
// page batches in any order. No network: the channel replays the input and then reports the
// source gone; the host is a stand-in whose CRIU and restores fail, with a real checkpoint store
// and page store in a scratch directory. Whatever arrives, the conversation must end (no crash,
// no wait for a message that cannot come), every message B sends must decode, and the name it
// reserved must be released.
//
// Input: records of [u8 kind][u16 little-endian length][length bytes]. An odd kind is a page
// batch (kind / 2 % 4 + 1 pages filled from the bytes), an even one a data message.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>

#include "elsa/engine/checkpoint_store.h"
#include "fuzz_scratch.h"
#include "migrate/destination.h"
#include "migrate/host.h"
#include "migrate/protocol.h"
#include "store/checkpoint_pages.h"

namespace {

using namespace elsa;

class ScriptedChannel final : public transport::Channel {
 public:
  explicit ScriptedChannel(std::deque<transport::Message> script) : script_(std::move(script)) {}
  int streams() const override { return 2; }
  Status Send(std::vector<uint8_t> data, int) override {
    if (!peer::DecodeMessage(data).ok()) __builtin_trap();  // B speaks the protocol it checks
    return Status::Ok();
  }
  Status SendPages(transport::PageBatch, int) override { return Status::Ok(); }
  Result<transport::Message> Receive(std::chrono::milliseconds) override {
    std::lock_guard lock(mu_);
    if (script_.empty()) return Status::EndOfStream("the source closed the channel");
    transport::Message m = std::move(script_.front());
    script_.pop_front();
    return m;
  }
  Status Flush(std::chrono::milliseconds) override { return Status::Ok(); }
  Status Close(std::chrono::milliseconds) override { return Status::Ok(); }
  transport::ChannelStats Stats() const override { return {}; }

 private:
  std::mutex mu_;
  std::deque<transport::Message> script_;
};

class FuzzHost final : public MigrationHost {
 public:
  explicit FuzzHost(const std::string& dir) : store_(dir + "/checkpoints", quiet_) {
    config_.state_dir = dir;
    config_.peer_timeout_ms = 100;
    config_.log = quiet_;
    if (!store_.Open().ok()) __builtin_trap();
    auto pages = CheckpointPages::Open(dir + "/pages", quiet_);
    if (!pages.ok()) __builtin_trap();
    pages_ = std::move(*pages);
  }
  const AgentConfig& config() const override { return config_; }
  const Logger& log() const override { return quiet_; }
  Result<CriuDriver> Criu() const override { return Status::NotFound("no CRIU while fuzzing"); }
  CheckpointStore& store() override { return store_; }
  CheckpointPages& pages() override { return *pages_; }
  Result<SessionInfo> ClaimRunning(const std::string&, uint64_t*) override { return Status::NotFound("no sessions"); }
  void Unclaim(uint64_t) override {}
  void ForgetAfterExit(uint64_t, int) override {}
  Result<CriuOutcome> SerializedDump(const CriuDriver&, const CriuDumpRequest&, const ProgressFn&,
                                     const CriuNotifyFn&) override {
    return Status::NotFound("no CRIU while fuzzing");
  }
  Manifest ManifestFor(const SessionInfo&, const std::string&) const override { return {}; }
  Status ReserveName(const std::string& name) override {
    if (!reserved_.insert(name).second) return Status::AlreadyExists("session " + name + " is arriving already");
    return Status::Ok();
  }
  void ReleaseName(const std::string& name) override { reserved_.erase(name); }
  Result<RestoreReport> RestoreReserved(const std::string&, const RestoreOptions&, const ProgressFn&) override {
    return Status::Unavailable("no restores while fuzzing");
  }
  Result<SessionInfo> RestoreAndAdopt(SessionInfo, const std::vector<std::string>&, const std::string&,
                                      const std::string&, std::unique_ptr<LazyPageSupply>, CriuOutcome*,
                                      std::function<void(pid_t)>) override {
    return Status::Unavailable("no restores while fuzzing");
  }
  Status Stop(const std::string&, int) override { return Status::Ok(); }
  void MarkIncoming(const std::string& name, bool under_way) override {
    if (under_way) incoming_.insert(name);
    else incoming_.erase(name);
  }
  Status SettleIncoming(const std::string& name, std::chrono::milliseconds) override {
    incoming_.erase(name);
    return Status::Ok();
  }
  peer::Outcome IncomingOutcome(const std::string& name) override {
    return incoming_.count(name) ? peer::Outcome::kUndecided : peer::Outcome::kAbsent;
  }
  void ResolveLater(std::function<void(const std::atomic<bool>&)>) override {}  // destinations never do

  bool any_reserved() const { return !reserved_.empty() || !incoming_.empty(); }

 private:
  Logger quiet_{[](const LogLine&) {}};
  AgentConfig config_;
  CheckpointStore store_;
  std::unique_ptr<CheckpointPages> pages_;
  std::set<std::string> reserved_;
  std::set<std::string> incoming_;
};

std::deque<transport::Message> Script(const uint8_t* data, size_t size) {
  std::deque<transport::Message> script;
  size_t at = 0;
  while (at + 3 <= size && script.size() < 64) {
    const uint8_t kind = data[at];
    const size_t len = std::min<size_t>(size - at - 3, data[at + 1] | (data[at + 2] << 8));
    const uint8_t* bytes = data + at + 3;
    at += 3 + len;
    transport::Message m;
    if (kind & 1) {
      m.kind = transport::Message::Kind::kPages;
      const size_t pages = kind / 2 % 4 + 1;
      for (size_t i = 0; i < pages; ++i) {
        uint8_t* page = m.pages.AddPage(0x10000 + i * transport::kPageSize);
        std::memset(page, len ? bytes[i % len] : 0, transport::kPageSize);
        if (len) std::memcpy(page, bytes, std::min(len, transport::kPageSize));
      }
    } else {
      m.data.assign(bytes, bytes + len);
    }
    script.push_back(std::move(m));
  }
  return script;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::ScratchDir scratch("peer-conversation");
  static FuzzHost host(scratch.path);
  // What an earlier input committed or left must not decide this one.
  std::error_code ignored;
  for (const char* sub : {"/checkpoints", "/run"}) {
    std::filesystem::remove_all(scratch.path + sub, ignored);
    std::filesystem::create_directories(scratch.path + sub, ignored);
  }
  ScriptedChannel channel(Script(data, size));
  {
    MigrationDestination destination(host, channel);
    Status ended = destination.Run();
    // How each conversation ended, when choosing seeds: ELSA_FUZZ_VERBOSE=1.
    static const bool verbose = std::getenv("ELSA_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "conversation ended: %s\n", ended.ToString().c_str());
  }
  if (host.any_reserved()) __builtin_trap();  // a name held (or marked arriving) after the migration ended
  return 0;
}
