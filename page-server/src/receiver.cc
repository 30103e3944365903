#include "elsa/page_server/receiver.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <future>
#include <optional>
#include <vector>

#include "elsa/fd_io.h"
#include "elsa/file_util.h"
#include "elsa/uninitialized.h"
#include "elsa/page_server/paged_images.h"
#include "elsa/page_server/protocol.h"
#include "elsa/page_server/loopback.h"
#include "socket_io.h"

namespace elsa::page_server {
namespace {

// Larger requests are refused: CRIU sends runs of at most a VMA, far below this.
constexpr uint64_t kMaxPagesPerRequest = 1ull << 28;  // 1 TiB
constexpr uint32_t kFirstPagesId = 0x10001;            // as `criu page-server` numbers them
constexpr size_t kPipeBytes = 1u << 20;

// Bytes as a string_view, for WriteFully.
std::string_view Bytes(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

// Moves `bytes` from the socket into the pages file without copying through user space
// (socket -> pipe -> file with splice), falling back to read/write where splice is refused.
class PageCopier {
 public:
  Status Init() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return Status::FromErrno("pipe", errno);
    read_end_.Reset(p[0]);
    write_end_.Reset(p[1]);
    int size = ::fcntl(write_end_.get(), F_SETPIPE_SZ, static_cast<int>(kPipeBytes));
    pipe_size_ = size > 0 ? static_cast<size_t>(size) : 65536;
    return Status::Ok();
  }

  Status Copy(int sock, int file, uint64_t bytes, Clock::time_point deadline) {
    while (bytes > 0) {
      ELSA_RETURN_IF_ERROR(WaitReadable(sock, deadline).WithContext("waiting for page data"));
      const size_t want = static_cast<size_t>(std::min<uint64_t>(bytes, pipe_size_));
      ssize_t n = use_splice_ ? ::splice(sock, nullptr, write_end_.get(), nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                              : -1;
      if (n < 0 && use_splice_ && errno == EINVAL) use_splice_ = false;
      if (!use_splice_) {
        ELSA_ASSIGN_OR_RETURN(size_t got, ReadCopy(sock, file, want));
        bytes -= got;
        continue;
      }
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        return Status::FromErrno("splice from socket", errno);
      }
      if (n == 0) return Status::PeerClosed("criu closed the connection in the middle of page data");
      for (ssize_t left = n; left > 0;) {
        ssize_t m = ::splice(read_end_.get(), nullptr, file, nullptr, static_cast<size_t>(left), SPLICE_F_MOVE);
        if (m < 0) {
          if (errno == EINTR) continue;
          return Status::FromErrno("splice into the pages image", errno);
        }
        left -= m;
      }
      bytes -= static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }

 private:
  Result<size_t> ReadCopy(int sock, int file, size_t want) {
    if (buffer_.empty()) buffer_.resize(kPipeBytes);
    ssize_t n = ::recv(sock, buffer_.data(), std::min(want, buffer_.size()), MSG_DONTWAIT);
    if (n == 0) return Status::PeerClosed("criu closed the connection in the middle of page data");
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return size_t{0};
      return Status::FromErrno("recv", errno);
    }
    ELSA_RETURN_IF_ERROR(WriteFully(file, Bytes(buffer_.data(), static_cast<size_t>(n)), "write pages image"));
    return static_cast<size_t>(n);
  }

  UniqueFd read_end_, write_end_;
  size_t pipe_size_ = 65536;
  bool use_splice_ = true;
  std::vector<uint8_t> buffer_;
};

// One pagemap being written: its entries, and the pages image its bytes go to.
struct OpenImage {
  ImageTarget target;
  uint32_t pages_id = 0;
  UniqueFd pages;                // without a sink
  std::vector<PageHash> refs;    // with a sink
  std::vector<PagemapEntry> entries;
};

// Receives pages into the sink with up to three batches in play: one arriving off the socket
// while two are taken in by helper threads (a store compresses outside its lock), so the
// network, both cores and the disk work at once. Hashes reach their
// image's refs in arrival order.
class SinkIntake {
 public:
  explicit SinkIntake(PageSink& sink) : sink_(sink) {}
  ~SinkIntake() {
    for (InFlight& f : in_flight_) f.done.wait();  // their buffers die with us
  }

  // Reads `nr_pages` pages off the socket; their hashes go to `refs` by the next Drain().
  Status Receive(int sock, uint64_t nr_pages, std::vector<PageHash>& refs, std::chrono::milliseconds idle_timeout) {
    while (nr_pages > 0) {
      Batch& batch = batches_[next_];  // never in flight: those are the other two
      next_ = (next_ + 1) % kBatches;
      const uint64_t n = std::min(nr_pages, kBatchPages);
      if (batch.pages.size() < kBatchPages * kPageSize) batch.pages.resize(kBatchPages * kPageSize);
      ELSA_RETURN_IF_ERROR(RecvAll(sock, batch.pages.data(), n * kPageSize, Clock::now() + idle_timeout)
                               .WithContext("receiving page data"));
      if (in_flight_.size() == kBatches - 1) ELSA_RETURN_IF_ERROR(DrainOldest());
      batch.hashes.resize(n);
      batch.refs = &refs;
      in_flight_.push_back({&batch, std::async(std::launch::async, [this, &batch] {
                              return sink_.PutBatch(batch.pages.data(), batch.hashes.size(), batch.hashes.data());
                            })});
      nr_pages -= n;
    }
    return Status::Ok();
  }

  // Waits for every batch being taken in and hands their hashes to their images.
  Status Drain() {
    while (!in_flight_.empty()) ELSA_RETURN_IF_ERROR(DrainOldest());
    return Status::Ok();
  }

  uint64_t pages_new() const { return fresh_; }

 private:
  static constexpr uint64_t kBatchPages = 256;
  static constexpr size_t kBatches = 3;
  struct Batch {
    RawBytes pages;
    std::vector<PageHash> hashes;
    std::vector<PageHash>* refs = nullptr;
  };
  struct InFlight {
    Batch* batch;
    std::future<Result<size_t>> done;
  };

  Status DrainOldest() {
    InFlight oldest = std::move(in_flight_.front());
    in_flight_.pop_front();
    ELSA_ASSIGN_OR_RETURN(size_t added, oldest.done.get());
    fresh_ += added;
    oldest.batch->refs->insert(oldest.batch->refs->end(), oldest.batch->hashes.begin(), oldest.batch->hashes.end());
    return Status::Ok();
  }

  PageSink& sink_;
  Batch batches_[kBatches];
  size_t next_ = 0;
  std::deque<InFlight> in_flight_;
  uint64_t fresh_ = 0;
};

Result<UniqueFd> CreateAt(int dir, const std::string& name) {
  UniqueFd fd(::openat(dir, name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno("create " + name, errno);
  return fd;
}

// Writes the image's pagemap (and refs). Its files go to `unsynced`: they are fsync'd after
// CRIU has its CLOSE reply, so the dump (and the session's freeze) does not wait on the disk.
Status FinishImage(int dir, OpenImage& image, std::vector<UniqueFd>& unsynced) {
  if (image.pages) {
    unsynced.push_back(std::move(image.pages));
  } else {
    const std::vector<uint8_t> refs = EncodeRefs(image.refs);
    const std::string refs_name = RefsFileName(image.pages_id);
    ELSA_ASSIGN_OR_RETURN(UniqueFd fd, CreateAt(dir, refs_name));
    ELSA_RETURN_IF_ERROR(WriteFully(fd.get(), Bytes(refs.data(), refs.size()), "write " + refs_name));
    unsynced.push_back(std::move(fd));
  }
  const std::vector<uint8_t> pagemap = EncodePagemapImage(image.pages_id, image.entries);
  const std::string name = PagemapFileName(image.target);
  ELSA_ASSIGN_OR_RETURN(UniqueFd fd, CreateAt(dir, name));
  ELSA_RETURN_IF_ERROR(WriteFully(fd.get(), Bytes(pagemap.data(), pagemap.size()), "write " + name));
  unsynced.push_back(std::move(fd));
  return Status::Ok();
}

Status SyncAll(std::vector<UniqueFd>& files) {
  for (const UniqueFd& fd : files)
    if (::fsync(fd.get()) != 0) return Status::FromErrno("fsync a received image", errno);
  files.clear();
  return Status::Ok();
}

}  // namespace

PageReceiver::PageReceiver(UniqueFd listen_fd, uint16_t port, UniqueFd connection, UniqueFd images_dir,
                           PageSink* sink)
    : listen_fd_(std::move(listen_fd)),
      port_(port),
      connection_(std::move(connection)),
      dir_(std::move(images_dir)),
      next_pages_id_(kFirstPagesId),
      sink_(sink) {}

Result<std::unique_ptr<PageReceiver>> PageReceiver::Listen(const std::string& address, uint16_t port,
                                                           const std::string& images_dir, PageSink* sink) {
  ELSA_ASSIGN_OR_RETURN(UniqueFd dir, OpenDirectory(images_dir));
  uint16_t bound = 0;
  ELSA_ASSIGN_OR_RETURN(UniqueFd fd, ListenOn(address, port, &bound));
  return std::make_unique<PageReceiver>(std::move(fd), bound, UniqueFd(), std::move(dir), sink);
}

Result<std::unique_ptr<PageReceiver>> PageReceiver::OnConnection(UniqueFd connection, const std::string& images_dir,
                                                                 PageSink* sink) {
  ELSA_ASSIGN_OR_RETURN(UniqueFd dir, OpenDirectory(images_dir));
  return std::make_unique<PageReceiver>(UniqueFd(), 0, std::move(connection), std::move(dir), sink);
}

void PageReceiver::Hangup() { page_server::Hangup(connection_ ? connection_.get() : listen_fd_.get()); }

Result<ReceiverStats> PageReceiver::ServeOne(std::chrono::milliseconds accept_timeout,
                                             std::chrono::milliseconds idle_timeout) {
  ELSA_ASSIGN_OR_RETURN(ServedSocket sock, ServedSocket::Take(connection_, listen_fd_.get(), accept_timeout));
  const auto start = Clock::now();
  PageCopier copier;
  ELSA_RETURN_IF_ERROR(copier.Init());
  ReceiverStats stats;
  std::optional<OpenImage> current;
  std::vector<UniqueFd> unsynced;

  std::optional<SinkIntake> intake;
  if (sink_) intake.emplace(*sink_);
  auto finish_current = [&]() -> Status {
    if (!current) return Status::Ok();
    if (intake) ELSA_RETURN_IF_ERROR(intake->Drain());
    return FinishImage(dir_.get(), *current, unsynced);
  };

  auto open = [&](ImageTarget target) -> Status {
    ELSA_RETURN_IF_ERROR(finish_current());
    current.emplace();
    current->target = target;
    current->pages_id = next_pages_id_++;
    if (!sink_) {
      ELSA_ASSIGN_OR_RETURN(current->pages, CreateAt(dir_.get(), PagesFileName(current->pages_id)));
    }
    stats.pagemaps++;
    return Status::Ok();
  };
  auto reply = [&](const void* bytes, size_t size) {
    return SendAll(sock.get(), bytes, size, Clock::now() + idle_timeout);
  };

  for (;;) {
    std::array<uint8_t, kRequestSize> raw{};
    bool at_boundary = false;
    Status st = RecvAll(sock.get(), raw.data(), raw.size(), Clock::now() + idle_timeout, &at_boundary);
    if (!st.ok()) {
      if (st.code() == StatusCode::kPeerClosed && at_boundary)
        return Status::PeerClosed("criu closed the connection before CLOSE: the images are incomplete");
      return st;
    }
    const Request req = DecodeRequest(raw);
    stats.requests++;
    switch (req.command) {
      case kOpen:
      case kOpen2: {
        ELSA_ASSIGN_OR_RETURN(ImageTarget target, DecodeDstId(req.dst_id));
        ELSA_RETURN_IF_ERROR(open(target));
        if (req.command == kOpen2) {
          const uint8_t has_parent = 0;  // this receiver keeps no parent images
          ELSA_RETURN_IF_ERROR(reply(&has_parent, 1));
        }
        break;
      }
      case kParent: {
        ELSA_RETURN_IF_ERROR(DecodeDstId(req.dst_id).status());
        const int32_t has_parent = 0;
        ELSA_RETURN_IF_ERROR(reply(&has_parent, sizeof has_parent));
        break;
      }
      case kAdd:
      case kHole:
      case kAddF: {
        const uint32_t flags = req.command == kAddF ? uint32_t{req.flags}
                               : req.command == kAdd ? uint32_t{kPePresent}
                                                     : uint32_t{kPeParent};
        if (flags & ~(kPeParent | kPeLazy | kPePresent))
          return Status::ProtocolError("unknown page flags " + std::to_string(flags));
        if (req.nr_pages == 0 || req.nr_pages > kMaxPagesPerRequest)
          return Status::ProtocolError("absurd page count " + std::to_string(req.nr_pages));
        if (req.vaddr % kPageSize != 0 || req.vaddr > UINT64_MAX - req.nr_pages * kPageSize)
          return Status::ProtocolError("bad page range at " + std::to_string(req.vaddr));
        ELSA_ASSIGN_OR_RETURN(ImageTarget target, DecodeDstId(req.dst_id));
        if (!current || !(current->target == target)) ELSA_RETURN_IF_ERROR(open(target));  // old CRIUs: no OPEN
        current->entries.push_back({req.vaddr, req.nr_pages, flags});
        if ((flags & kPePresent) && sink_) {
          ELSA_RETURN_IF_ERROR(intake->Receive(sock.get(), req.nr_pages, current->refs, idle_timeout));
          stats.pages_present += req.nr_pages;
        } else if (flags & kPePresent) {
          ELSA_RETURN_IF_ERROR(copier.Copy(sock.get(), current->pages.get(), req.nr_pages * kPageSize,
                                           Clock::now() + idle_timeout));
          stats.pages_present += req.nr_pages;
        } else if (flags & kPeLazy) {
          stats.pages_lazy += req.nr_pages;
        } else {
          stats.pages_in_parent += req.nr_pages;
        }
        break;
      }
      case kClose:
      case kForceClose: {
        ELSA_RETURN_IF_ERROR(finish_current());
        current.reset();
        const int32_t done = 0;
        ELSA_RETURN_IF_ERROR(reply(&done, sizeof done));
        // criu closes its side next; waiting for that avoids a TIME_WAIT on our side. Not after
        // FORCE_CLOSE: CRIU says that when its socket was handed to it (--ps-socket), and a copy
        // of that end may stay open elsewhere for a while.
        if (req.command == kClose) {
          char c;
          (void)RecvAll(sock.get(), &c, 1, Clock::now() + std::chrono::seconds(10));
        }
        const auto closed = Clock::now();
        ELSA_RETURN_IF_ERROR(SyncAll(unsynced));
        if (::fsync(dir_.get()) != 0) return Status::FromErrno("fsync the images directory", errno);
        stats.sync_seconds = std::chrono::duration<double>(Clock::now() - closed).count();
        if (intake) stats.pages_new = intake->pages_new();
        stats.seconds = std::chrono::duration<double>(Clock::now() - start).count();
        return stats;
      }
      case kGet:
        return Status::ProtocolError("GET is for a lazy-pages server; this one receives a dump");
      default:
        return Status::ProtocolError("unknown page-server command " + std::to_string(req.command));
    }
  }
}

}  // namespace elsa::page_server
