#include "store/checkpoint_pages.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <chrono>
#include <unordered_set>

#include "elsa/file_util.h"
#include "elsa/page_server/loopback.h"
#include "elsa/unique_fd.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;
using page_server::PageHash;


}  // namespace

Result<std::unique_ptr<CheckpointPages>> CheckpointPages::Open(const std::string& dir, Logger log) {
  ELSA_ASSIGN_OR_RETURN(auto store, page_server::PageStore::Open(dir, page_server::PageStore::kSegmentBytes, std::move(log)));
  return std::make_unique<CheckpointPages>(std::move(store));
}

PageIntake::~PageIntake() {
  if (serving_.valid()) (void)Finish(false);
}

Result<page_server::ReceiverStats> PageIntake::Finish(bool dump_succeeded) {
  if (!serving_.valid()) return Status::FailedPrecondition("page intake already finished");
  if (!dump_succeeded) receiver_->Hangup();
  Result<page_server::ReceiverStats> received = serving_.get();
  criu_end_.Reset();
  return received;
}

Result<std::unique_ptr<PageIntake>> CheckpointPages::StartIntake(const std::string& checkpoint_dir,
                                                                  page_server::PageSink* sink) {
  auto intake = std::make_unique<PageIntake>();
  intake->hold_ = gate_.Hold();
  ELSA_ASSIGN_OR_RETURN(page_server::LoopbackPair pair, page_server::ConnectedLoopbackPair());
  intake->criu_end_ = std::move(pair.theirs);
  ELSA_ASSIGN_OR_RETURN(intake->receiver_, page_server::PageReceiver::OnConnection(std::move(pair.ours), checkpoint_dir,
                                                                                    sink ? sink : store_.get()));
  // CRIU connects as its dump begins; a dump that fails before that is ended by Finish(false).
  intake->serving_ = std::async(std::launch::async, [r = intake->receiver_.get()] { return r->ServeOne(10min); });
  return intake;
}

Status CheckpointPages::Sync() { return store_->Sync(); }

Result<size_t> CheckpointPages::Put(const uint8_t* pages, size_t count) {
  std::vector<PageHash> hashes(count);
  return Put(pages, count, hashes.data());
}

Result<size_t> CheckpointPages::Put(const uint8_t* pages, size_t count, PageHash* hashes) {
  PagesPin hold = gate_.Hold();
  return store_->PutBatch(pages, count, hashes);
}

Status CheckpointPages::VerifyPages(const std::string& checkpoint_dir, bool read_every_page) const {
  ELSA_ASSIGN_OR_RETURN(auto images, page_server::LoadPagedImages(checkpoint_dir));
  std::vector<uint8_t> page(page_server::kPageSize);
  // Every page is looked at, not only up to the first loss: how much is lost tells the user
  // whether the checkpoint is worth anything.
  uint64_t named = 0, lost = 0;
  Status first_loss;
  for (const auto& image : images)
    for (const PageHash& hash : image.refs) {
      ++named;
      Status page_status = read_every_page ? store_->Get(hash, page.data()).WithContext(image.pagemap_file)
                           : store_->Contains(hash)
                               ? Status::Ok()
                               : Status::Corruption(image.pagemap_file + ": page " + hash.ToHex() + " is not in the page store");
      if (!page_status.ok() && lost++ == 0) first_loss = std::move(page_status);
    }
  if (lost == 0) return Status::Ok();
  return Status::Corruption(std::to_string(lost) + " of the " + std::to_string(named) +
                            " pages it names are lost or damaged in the page store (" + store_->dir() +
                            "); the first: " + first_loss.message());
}

Result<page_server::MaterializeStats> CheckpointPages::Materialize(const std::string& checkpoint_dir,
                                                                   const std::string& staging, bool lazy) const {
  PagesPin hold = gate_.Hold();
  return page_server::MaterializeImages(*store_, checkpoint_dir, staging,
                                       lazy ? page_server::RestoreImages::kLazy : page_server::RestoreImages::kEager);
}

LazyPageSupply::~LazyPageSupply() {
  if (!serving_.valid()) return;
  // Only on a failed restore: nothing is faulting on these pages any more.
  daemon_.Signal(SIGKILL);
  (void)daemon_.Wait();
  server_->Hangup();
  (void)serving_.get();
}

Result<page_server::LazyServeStats> LazyPageSupply::Wait() {
  if (!serving_.valid()) return Status::FailedPrecondition("lazy page supply already finished");
  Result<page_server::LazyServeStats> served = serving_.get();
  const int status = daemon_.Wait();
  if (!served.ok()) return served.status().WithContext("serving pages to criu lazy-pages");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string msg = "criu lazy-pages " + DescribeWaitStatus(status);
    if (auto log = ReadFile(staging_ + "/" + CriuDriver::kLazyPagesLog); log.ok()) msg += ":\n" + SummarizeCriuLog(*log);
    return Status::ExternalFailure(msg);
  }
  return served;
}

Result<std::unique_ptr<LazyPageSupply>> CheckpointPages::StartLazySupply(
    const CriuDriver& criu, const std::string& checkpoint_dir, const std::string& staging) {
  ELSA_ASSIGN_OR_RETURN(auto images, page_server::LoadPagedImages(checkpoint_dir));
  ELSA_ASSIGN_OR_RETURN(page_server::LoopbackPair pair, page_server::ConnectedLoopbackPair());
  auto server = page_server::LazyPageServer::OnConnection(std::move(pair.ours),
                                                          page_server::PageLocator::FromImages(images), store_.get());
  return StartSupply(criu, std::move(server), std::move(pair.theirs), staging);
}

Result<std::unique_ptr<LazyPageSupply>> CheckpointPages::StartLazySupply(
    const CriuDriver& criu, std::shared_ptr<page_server::LazyPageSource> source, const std::string& staging) {
  ELSA_ASSIGN_OR_RETURN(page_server::LoopbackPair pair, page_server::ConnectedLoopbackPair());
  auto server = page_server::LazyPageServer::OnConnection(std::move(pair.ours), source.get());
  ELSA_ASSIGN_OR_RETURN(auto supply, StartSupply(criu, std::move(server), std::move(pair.theirs), staging));
  supply->source_ = std::move(source);
  return supply;
}

Result<std::unique_ptr<LazyPageSupply>> CheckpointPages::StartSupply(
    const CriuDriver& criu, std::unique_ptr<page_server::LazyPageServer> server, UniqueFd criu_end,
    const std::string& staging) {
  auto supply = std::make_unique<LazyPageSupply>();
  supply->hold_ = gate_.Hold();
  supply->staging_ = staging;
  supply->server_ = std::move(server);
  supply->serving_ = std::async(std::launch::async, [s = supply->server_.get()] { return s->ServeOne(10min); });
  auto daemon = criu.StartLazyPages(staging, criu_end.get());
  criu_end.Reset();  // the daemon's now: its exit is the end of the connection
  if (!daemon.ok()) {
    supply->server_->Hangup();
    (void)supply->serving_.get();
    return daemon.status();
  }
  supply->daemon_ = std::move(*daemon);
  return supply;
}

Result<CollectReport> CheckpointPages::Collect(const LiveCheckpoints& live_checkpoints) {
  return gate_.Exclusively([&] { return CollectExclusively(live_checkpoints); });
}

Result<CollectReport> CheckpointPages::CollectExclusively(const LiveCheckpoints& live_checkpoints) {
  const auto start = std::chrono::steady_clock::now();
  ELSA_ASSIGN_OR_RETURN(std::vector<std::string> checkpoint_dirs, live_checkpoints());
  CollectReport report;
  std::unordered_set<PageHash, page_server::PageStore::HashOf> live;
  for (const std::string& dir : checkpoint_dirs) {
    auto images = page_server::LoadPagedImages(dir);
    if (!images.ok())
      return images.status().WithContext("not collecting the page store: checkpoint " + dir + " cannot be read");
    for (const auto& image : *images) live.insert(image.refs.begin(), image.refs.end());
    report.checkpoints++;
  }
  report.live_pages = live.size();
  report.pages_before = store_->Stats().unique_pages;
  ELSA_ASSIGN_OR_RETURN(report.bytes_reclaimed, store_->Collect([&](const PageHash& h) { return live.count(h) != 0; }));
  report.pages_after = store_->Stats().unique_pages;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace elsa
