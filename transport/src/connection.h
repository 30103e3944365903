// One TCP connection as the channel sees it. Backends differ only here: blocking sockets with
// poll(), or io_uring. Reads and writes may run at the same time from two threads (one reader,
// one writer), never two of the same kind.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "elsa/status.h"
#include "elsa/transport/transport.h"
#include "elsa/unique_fd.h"

namespace elsa::transport {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

class Connection {
 public:
  virtual ~Connection() = default;

  // Writes every byte of `iov` (typically several frames at once) before `deadline`.
  // `zero_copy_hint`: the payload is large and stays untouched until this returns.
  virtual Status WriteAll(std::span<const iovec> iov, Deadline deadline, bool zero_copy_hint) = 0;
  // Reads 1..size bytes; 0 means the peer closed its side.
  virtual Result<size_t> ReadSome(uint8_t* buf, size_t size, Deadline deadline) = 0;
  // A buffer the reader will use repeatedly; a backend may register it with the kernel.
  virtual void UseReadBuffer(uint8_t* buf, size_t size) { (void)buf, (void)size; }

  virtual void ShutdownWrite();
  // Unblocks any read or write in progress; the connection is unusable afterwards.
  virtual void Abort();
  int fd() const { return fd_.get(); }

  Status ReadExact(uint8_t* buf, size_t size, Deadline deadline);

 protected:
  explicit Connection(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

std::unique_ptr<Connection> MakeTcpConnection(UniqueFd fd);
// FailedPrecondition when io_uring cannot be used here.
Result<std::unique_ptr<Connection>> MakeUringConnection(UniqueFd fd);
Status UringAvailable();
// RDMA (built with libibverbs): the TCP connection `fd` bootstraps an RC queue pair with the
// peer; frames then move as RDMA SENDs between registered buffers. FailedPrecondition, with the
// reason, where no RDMA device exists.
Result<std::unique_ptr<Connection>> MakeRdmaConnection(UniqueFd fd, Deadline deadline);
Status RdmaAvailable();

// Moves the iovec list past `bytes` written: `*first` is the first iovec with bytes left.
void AdvanceIov(std::vector<iovec>& iov, size_t* first, size_t bytes);

// Socket helpers shared by both backends.
Result<UniqueFd> ConnectTcp(const Endpoint& peer, Deadline deadline);
Result<UniqueFd> ListenTcp(const Endpoint& where, uint16_t* bound_port);
void TuneSocket(int fd);  // TCP_NODELAY: acks and small frames must not wait

}  // namespace elsa::transport
