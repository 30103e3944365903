// The blocking-socket backend (poll + sendmsg/recv), and socket helpers both backends use.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "connection.h"
#include "elsa/fd_io.h"

namespace elsa::transport {
namespace {

// Waits for `events` on fd; Timeout when the deadline passes first.
Status WaitFor(int fd, short events, Deadline deadline, const char* what) {
  return PollUntil(fd, events, deadline, std::string("peer stalled: no progress ") + what + " before the deadline");
}

class TcpConnection final : public Connection {
 public:
  explicit TcpConnection(UniqueFd fd) : Connection(std::move(fd)) {}

  Status WriteAll(std::span<const iovec> iov_in, Deadline deadline, bool) override {
    std::vector<iovec> iov(iov_in.begin(), iov_in.end());
    size_t first = 0;
    while (first < iov.size()) {
      msghdr msg{};
      msg.msg_iov = iov.data() + first;
      msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
      ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          ELSA_RETURN_IF_ERROR(WaitFor(fd_.get(), POLLOUT, deadline, "sending"));
          continue;
        }
        if (errno == EPIPE || errno == ECONNRESET) return Status::PeerClosed("peer closed the connection while we were sending");
        return Status::FromErrno("sendmsg", errno);
      }
      AdvanceIov(iov, &first, static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  Result<size_t> ReadSome(uint8_t* buf, size_t size, Deadline deadline) override {
    for (;;) {
      ssize_t n = ::recv(fd_.get(), buf, size, MSG_DONTWAIT);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        ELSA_RETURN_IF_ERROR(WaitFor(fd_.get(), POLLIN, deadline, "receiving"));
        continue;
      }
      if (errno == ECONNRESET) return Status::PeerClosed("peer reset the connection");
      return Status::FromErrno("recv", errno);
    }
  }
};

}  // namespace

void AdvanceIov(std::vector<iovec>& iov, size_t* first, size_t bytes) {
  while (bytes > 0 && *first < iov.size()) {
    size_t take = std::min(bytes, iov[*first].iov_len);
    iov[*first].iov_base = static_cast<uint8_t*>(iov[*first].iov_base) + take;
    iov[*first].iov_len -= take;
    bytes -= take;
    if (iov[*first].iov_len == 0) ++*first;
  }
  while (*first < iov.size() && iov[*first].iov_len == 0) ++*first;
}

void Connection::ShutdownWrite() { ::shutdown(fd_.get(), SHUT_WR); }
void Connection::Abort() { ::shutdown(fd_.get(), SHUT_RDWR); }

Status Connection::ReadExact(uint8_t* buf, size_t size, Deadline deadline) {
  size_t got = 0;
  while (got < size) {
    ELSA_ASSIGN_OR_RETURN(size_t n, ReadSome(buf + got, size - got, deadline));
    if (n == 0) return Status::PeerClosed("peer closed the connection");
    got += n;
  }
  return Status::Ok();
}

std::unique_ptr<Connection> MakeTcpConnection(UniqueFd fd) { return std::make_unique<TcpConnection>(std::move(fd)); }

void TuneSocket(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

Result<UniqueFd> ConnectTcp(const Endpoint& peer, Deadline deadline) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(peer.port);
  if (int rc = ::getaddrinfo(peer.host.c_str(), port.c_str(), &hints, &res); rc != 0)
    return Status::InvalidArgument("cannot resolve " + peer.host + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
  Status last = Status::Unavailable("no address for " + peer.host);
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return Status::FromErrno("socket", errno);
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last = Status::Unavailable("connect to " + peer.host + ":" + port + ": " + std::strerror(errno));
      continue;
    }
    if (Status s = WaitFor(fd.get(), POLLOUT, deadline, "connecting"); !s.ok()) {
      last = Status::Timeout("connect to " + peer.host + ":" + port + " timed out");
      continue;
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      last = Status::Unavailable("connect to " + peer.host + ":" + port + ": " + std::strerror(err));
      continue;
    }
    int flags = ::fcntl(fd.get(), F_GETFL);
    ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    TuneSocket(fd.get());
    return fd;
  }
  return last;
}

Result<UniqueFd> ListenTcp(const Endpoint& where, uint16_t* bound_port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(where.port);
  const char* host = where.host.empty() ? nullptr : where.host.c_str();
  if (int rc = ::getaddrinfo(host, port.c_str(), &hints, &res); rc != 0)
    return Status::InvalidArgument("cannot resolve " + where.host + ": " + gai_strerror(rc));
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
  UniqueFd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket", errno);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), res->ai_addr, res->ai_addrlen) != 0)
    return Status::FromErrno("bind " + where.host + ":" + port, errno);
  if (::listen(fd.get(), 128) != 0) return Status::FromErrno("listen", errno);
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  *bound_port = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                                 : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  return fd;
}

}  // namespace elsa::transport
