// The io_uring backend. Each connection has two small rings, one for its writer thread and one
// for its reader thread, so neither needs a lock. A write of several frames becomes one chain of
// linked SENDMSG (or SENDMSG_ZC) requests, submitted with one system call; reads land in a
// buffer registered with the kernel (READ_FIXED) when the reader uses one.
#include <liburing.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "connection.h"

namespace elsa::transport {
namespace {

constexpr unsigned kRingEntries = 64;

class Ring {
 public:
  Ring() = default;
  ~Ring() {
    if (ready_) io_uring_queue_exit(&ring_);
  }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  Status Init() {
    int rc = io_uring_queue_init(kRingEntries, &ring_, 0);
    if (rc < 0)
      return Status::FailedPrecondition(std::string("io_uring unavailable: ") + std::strerror(-rc) +
                                        " (see /proc/sys/kernel/io_uring_disabled); use the tcp backend");
    ready_ = true;
    return Status::Ok();
  }
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
  bool ready_ = false;
};

class UringConnection final : public Connection {
 public:
  explicit UringConnection(UniqueFd fd) : Connection(std::move(fd)) {}

  Status Init() {
    ELSA_RETURN_IF_ERROR(write_ring_.Init());
    return read_ring_.Init();
  }

  Status WriteAll(std::span<const iovec> iov_in, Deadline deadline, bool zero_copy_hint) override {
    std::vector<iovec> rest(iov_in.begin(), iov_in.end());
    size_t first = 0;
    while (first < rest.size()) {
      // One linked chain of sendmsg requests, IOV_MAX iovecs each, submitted together.
      const size_t chunks = std::min<size_t>((rest.size() - first + IOV_MAX - 1) / IOV_MAX, kRingEntries);
      std::vector<msghdr> msgs(chunks);
      std::vector<size_t> expect(chunks);
      for (size_t c = 0; c < chunks; ++c) {
        size_t begin = first + c * IOV_MAX;
        size_t count = std::min<size_t>(IOV_MAX, rest.size() - begin);
        msgs[c] = {};
        msgs[c].msg_iov = rest.data() + begin;
        msgs[c].msg_iovlen = count;
        expect[c] = 0;
        for (size_t i = begin; i < begin + count; ++i) expect[c] += rest[i].iov_len;
        io_uring_sqe* sqe = io_uring_get_sqe(write_ring_.get());
        if (zero_copy_hint) io_uring_prep_sendmsg_zc(sqe, fd_.get(), &msgs[c], MSG_WAITALL | MSG_NOSIGNAL);
        else io_uring_prep_sendmsg(sqe, fd_.get(), &msgs[c], MSG_WAITALL | MSG_NOSIGNAL);
        sqe->user_data = c;
        if (c + 1 < chunks) sqe->flags |= IOSQE_IO_LINK;
      }
      int rc = io_uring_submit(write_ring_.get());
      if (rc < 0) return Status::IoError(std::string("io_uring_submit: ") + std::strerror(-rc));

      std::vector<int> result(chunks, 0);
      size_t pending = chunks, notifications = 0;
      Status status;
      while (pending > 0 || notifications > 0) {
        io_uring_cqe* cqe = nullptr;
        ELSA_RETURN_IF_ERROR(WaitCqe(write_ring_.get(), &cqe, deadline, "sending", &status));
        if (cqe->flags & IORING_CQE_F_NOTIF) {
          --notifications;  // the kernel is done with a zero-copy buffer
        } else {
          result[cqe->user_data] = cqe->res;
          --pending;
          if (cqe->flags & IORING_CQE_F_MORE) ++notifications;
        }
        io_uring_cqe_seen(write_ring_.get(), cqe);
      }
      if (!status.ok()) return status;
      size_t written = 0;
      for (size_t c = 0; c < chunks; ++c) {
        if (result[c] < 0) {
          if (result[c] == -ECANCELED) break;  // after a short or failed link
          if (result[c] == -EPIPE || result[c] == -ECONNRESET)
            return Status::PeerClosed("peer closed the connection while we were sending");
          return Status::IoError(std::string("sendmsg: ") + std::strerror(-result[c]));
        }
        written += static_cast<size_t>(result[c]);
        if (static_cast<size_t>(result[c]) < expect[c]) break;
      }
      // Past what was written: all of it, unless a send came back short.
      AdvanceIov(rest, &first, written);
    }
    return Status::Ok();
  }

  Result<size_t> ReadSome(uint8_t* buf, size_t size, Deadline deadline) override {
    io_uring_sqe* sqe = io_uring_get_sqe(read_ring_.get());
    const bool fixed = registered_ && buf >= read_buf_ && buf + size <= read_buf_ + read_buf_size_;
    if (fixed) io_uring_prep_read_fixed(sqe, fd_.get(), buf, static_cast<unsigned>(size), 0, 0);
    else io_uring_prep_recv(sqe, fd_.get(), buf, size, 0);
    int rc = io_uring_submit(read_ring_.get());
    if (rc < 0) return Status::IoError(std::string("io_uring_submit: ") + std::strerror(-rc));
    io_uring_cqe* cqe = nullptr;
    Status status;
    ELSA_RETURN_IF_ERROR(WaitCqe(read_ring_.get(), &cqe, deadline, "receiving", &status));
    int res = cqe->res;
    io_uring_cqe_seen(read_ring_.get(), cqe);
    if (!status.ok()) return status;
    if (res == -ECONNRESET) return Status::PeerClosed("peer reset the connection");
    if (res < 0) return Status::IoError(std::string("recv: ") + std::strerror(-res));
    return static_cast<size_t>(res);
  }

  void UseReadBuffer(uint8_t* buf, size_t size) override {
    iovec iov{buf, size};
    if (io_uring_register_buffers(read_ring_.get(), &iov, 1) == 0) {
      read_buf_ = buf;
      read_buf_size_ = size;
      registered_ = true;
    }
  }

 private:
  // Waits for the next completion. When the deadline passes, the connection is shut down so the
  // request in flight completes (its buffers must not be released before), and `*status` says
  // why; the caller still consumes the completion.
  Status WaitCqe(io_uring* ring, io_uring_cqe** cqe, Deadline deadline, const char* what, Status* status) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()).count();
      __kernel_timespec ts{};
      ts.tv_sec = std::max<long long>(left, 0) / 1000000000;
      ts.tv_nsec = std::max<long long>(left, 0) % 1000000000;
      int rc = status->ok() ? io_uring_wait_cqe_timeout(ring, cqe, &ts) : io_uring_wait_cqe(ring, cqe);
      if (rc == 0) return Status::Ok();
      if (rc == -EINTR) continue;
      if (rc == -ETIME) {
        *status = Status::Timeout(std::string("peer stalled: no progress ") + what + " before the deadline");
        Abort();
        continue;
      }
      return Status::IoError(std::string("io_uring_wait_cqe: ") + std::strerror(-rc));
    }
  }

  Ring write_ring_;
  Ring read_ring_;
  uint8_t* read_buf_ = nullptr;
  size_t read_buf_size_ = 0;
  bool registered_ = false;
};

}  // namespace

Status UringAvailable() {
  Ring probe;
  return probe.Init();
}

Result<std::unique_ptr<Connection>> MakeUringConnection(UniqueFd fd) {
  auto conn = std::make_unique<UringConnection>(std::move(fd));
  ELSA_RETURN_IF_ERROR(conn->Init());
  return std::unique_ptr<Connection>(std::move(conn));
}

}  // namespace elsa::transport
