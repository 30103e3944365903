#include "socket_io.h"

#include "elsa/fd_io.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>

namespace elsa::page_server {
namespace {

Status WaitFor(int fd, short events, Clock::time_point deadline) {
  return PollUntil(fd, events, deadline, "the peer went quiet");
}

}  // namespace

Status WaitReadable(int fd, Clock::time_point deadline) { return WaitFor(fd, POLLIN, deadline); }

Status RecvAll(int fd, void* buf, size_t size, Clock::time_point deadline, bool* at_boundary) {
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::recv(fd, static_cast<uint8_t*>(buf) + got, size - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) {
      if (at_boundary) *at_boundary = got == 0;
      return Status::PeerClosed(got == 0 ? "the peer closed the connection" : "the peer closed the connection mid-message");
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return errno == ECONNRESET ? Status::PeerClosed("the peer reset the connection")
                                                    : Status::FromErrno("recv", errno);
    ELSA_RETURN_IF_ERROR(WaitFor(fd, POLLIN, deadline));
  }
  return Status::Ok();
}

Status SendAll(int fd, const void* buf, size_t size, Clock::time_point deadline) {
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = ::send(fd, static_cast<const uint8_t*>(buf) + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return errno == EPIPE || errno == ECONNRESET ? Status::PeerClosed("the peer went away")
                                                                      : Status::FromErrno("send", errno);
    ELSA_RETURN_IF_ERROR(WaitFor(fd, POLLOUT, deadline));
  }
  return Status::Ok();
}

Result<UniqueFd> ListenOn(const std::string& address, uint16_t port, uint16_t* bound_port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (::inet_pton(AF_INET, address.c_str(), &addr.sin_addr) != 1)
    return Status::InvalidArgument("not an IPv4 address: " + address);
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket", errno);
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return Status::FromErrno("bind " + address + ":" + std::to_string(port), errno);
  if (::listen(fd.get(), 16) != 0) return Status::FromErrno("listen", errno);
  socklen_t len = sizeof addr;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  *bound_port = ntohs(addr.sin_port);
  return fd;
}

Result<UniqueFd> AcceptOne(int listen_fd, Clock::time_point deadline) {
  ELSA_RETURN_IF_ERROR(WaitFor(listen_fd, POLLIN, deadline).WithContext("no connection"));
  UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd) return Status::FromErrno("accept", errno);
  int one = 1;
  // CRIU waits for our small replies (OPEN2, CLOSE) before going on.
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

}  // namespace elsa::page_server
