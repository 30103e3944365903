// The source's side of post-copy: every lazy page goes to the destination, read from the
// stopped tree, while the destination's session may already be waiting on some of them.
#include <sys/uio.h>

#include <algorithm>

#include "elsa/file_util.h"
#include "migrate/known_pages.h"
#include "migrate/peer_reader.h"
#include "migrate/postcopy.h"

namespace elsa {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using page_server::PageHash;

constexpr uint64_t kPushPages = 256;      // 1 MiB read, hashed and sent at a time

}  // namespace

PostcopyPusher::PostcopyPusher(transport::Channel& channel, const LazyPlan& plan, std::map<uint64_t, pid_t> host_pids,
                               KnownPages& known)
    : channel_(channel), plan_(plan), host_pids_(std::move(host_pids)), known_(known), sent_(plan.pages(), false) {
  buffer_.resize(kPushPages * transport::kPageSize);
  // Wants are answered on stream 0, the bulk goes on another: a fault does not queue behind it.
  push_stream_ = channel.streams() > 1 ? 1 : 0;
  PeerReader::Handlers handlers;
  handlers.intercept = [this](const peer::Control& control) {
    const auto* want = std::get_if<peer::Want>(&control);
    if (!want) return false;
    std::lock_guard lock(wants_mu_);
    wants_.push_back({want->task, want->vaddr, std::min(want->pages, peer::kMaxWantPages)});
    return true;
  };
  reader_ = std::make_unique<PeerReader>(channel, std::move(handlers));
}

PostcopyPusher::~PostcopyPusher() = default;

Status PostcopyPusher::Send(const LazyPlan::Run& run, uint64_t offset, uint64_t count, bool faulted) {
  const uint64_t vaddr = run.vaddr + offset * transport::kPageSize;
  auto pid = host_pids_.find(plan_.pids()[run.task]);
  if (pid == host_pids_.end())
    return Status::Internal("process " + std::to_string(plan_.pids()[run.task]) + " of the dump is gone");
  iovec local{buffer_.data(), count * transport::kPageSize};
  iovec remote{reinterpret_cast<void*>(vaddr), count * transport::kPageSize};
  const ssize_t n = ::process_vm_readv(pid->second, &local, 1, &remote, 1, 0);
  if (n != static_cast<ssize_t>(count * transport::kPageSize))
    return Status::FromErrno("reading " + std::to_string(count) + " pages at 0x" + HexU64(vaddr) + " of stopped pid " +
                                 std::to_string(pid->second),
                             n < 0 ? errno : EIO);
  transport::PageBatch batch(count);
  std::vector<peer::PageRef> refs;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t index = run.first + offset + i;
    if (sent_[index]) continue;
    sent_[index] = true;
    const uint8_t* page = buffer_.data() + i * transport::kPageSize;
    const uint64_t address = PostcopyAddress(run.task, vaddr + i * transport::kPageSize);
    const PageHash hash = page_server::HashPage(page);
    // A ref may reach the destination before the bytes it names (another stream): its reads
    // wait for them.
    if (known_.Claim(hash) || faulted) {
      batch.AddPage(address, page);
    } else {
      refs.push_back({address, hash.low, hash.high});
    }
  }
  const int stream = faulted ? 0 : push_stream_;
  (faulted ? stats_.pages_faulted : stats_.pages_sent) += batch.size();
  stats_.pages_referenced += refs.size();
  if (!batch.empty()) ELSA_RETURN_IF_ERROR(channel_.SendPages(std::move(batch), stream));
  for (size_t at = 0; at < refs.size(); at += peer::kMaxRefsPerMessage) {
    const size_t n_refs = std::min(peer::kMaxRefsPerMessage, refs.size() - at);
    ELSA_RETURN_IF_ERROR(channel_.Send(peer::EncodePageRefs({refs.data() + at, n_refs}), stream));
  }
  return Status::Ok();
}

Status PostcopyPusher::ServeWants() {
  for (;;) {
    Want w;
    {
      std::lock_guard lock(wants_mu_);
      if (wants_.empty()) return Status::Ok();
      w = wants_.front();
      wants_.pop_front();
    }
    stats_.wants++;
    auto place = plan_.Locate(w.task, w.vaddr);
    if (!place) return Status::ProtocolError("the destination wants a page that is not lazy (0x" + HexU64(w.vaddr) + ")");
    auto run = std::upper_bound(plan_.runs().begin(), plan_.runs().end(), place->index,
                                [](uint64_t i, const LazyPlan::Run& r) { return i < r.first; }) - 1;
    // All of it: the destination waits on every page it asked for (stopping at kPushPages left
    // the rest of a large fault to a bulk push that does not run until the restore is over).
    const uint64_t offset = place->index - run->first, wanted = std::min(w.pages, place->left);
    for (uint64_t done = 0; done < wanted; done += kPushPages)
      ELSA_RETURN_IF_ERROR(Send(*run, offset + done, std::min(kPushPages, wanted - done), true));
  }
}

Result<peer::Control> PostcopyPusher::AwaitControl(std::chrono::milliseconds timeout) {
  // Woken by each want the reader takes: faults are answered at once, not at a polling tick.
  for (;;) {
    ELSA_RETURN_IF_ERROR(ServeWants());
    ELSA_ASSIGN_OR_RETURN(std::optional<peer::Control> control, reader_->NextControlOrIntercepted(timeout));
    if (control) return std::move(*control);
  }
}

Result<PushStats> PostcopyPusher::Push(std::chrono::milliseconds patience, const PushProgressFn& progress) {
  const auto start = Clock::now();
  uint64_t done = 0;
  auto last_report = Clock::now();
  for (const LazyPlan::Run& run : plan_.runs()) {
    for (uint64_t offset = 0; offset < run.pages; offset += kPushPages) {
      ELSA_RETURN_IF_ERROR(ServeWants());
      const uint64_t count = std::min(kPushPages, run.pages - offset);
      ELSA_RETURN_IF_ERROR(Send(run, offset, count, false));
      done += count;
      if (progress && Clock::now() - last_report > 500ms) {
        progress(done, plan_.pages());
        last_report = Clock::now();
      }
    }
  }
  // `pushed` must not overtake the last batches, which travel on another stream.
  ELSA_RETURN_IF_ERROR(channel_.Flush(patience).WithContext("delivering the pushed pages"));
  ELSA_RETURN_IF_ERROR(channel_.Send(peer::EncodeControl(peer::Pushed{plan_.pages()}), 0));
  if (progress) progress(plan_.pages(), plan_.pages());
  ELSA_RETURN_IF_ERROR(peer::Expect<peer::Delivered>(AwaitControl(patience), "after the pushed pages").status());
  stats_.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return stats_;
}

}  // namespace elsa
