#include "api/tls_connection.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

namespace elsa {

namespace {

struct AddrInfoFree {
  void operator()(addrinfo* list) const { freeaddrinfo(list); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoFree>;

Result<AddrInfoPtr> Resolve(const std::string& address, bool passive) {
  ELSA_ASSIGN_OR_RETURN(auto host_port, SplitHostPort(address));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host_port.first.c_str(), host_port.second.c_str(), &hints, &found); rc != 0)
    return Status::Unavailable("cannot resolve " + host_port.first + ": " + gai_strerror(rc));
  return AddrInfoPtr(found);
}

}  // namespace

Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size())
    return Status::InvalidArgument("'" + address + "': expected HOST:PORT");
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  else if (host.find(':') != std::string::npos)
    return Status::InvalidArgument("'" + address + "': write an IPv6 address as [ADDRESS]:PORT");
  char* end = nullptr;
  const unsigned long number = std::strtoul(port.c_str(), &end, 10);
  if (host.empty() || *end != '\0' || number > 65535)
    return Status::InvalidArgument("'" + address + "': expected HOST:PORT with a port 0-65535");
  return std::make_pair(host, port);
}

Result<UniqueFd> ListenTcp(const std::string& address) {
  ELSA_ASSIGN_OR_RETURN(AddrInfoPtr list, Resolve(address, /*passive=*/true));
  Status last = Status::Unavailable("no address for " + address);
  for (addrinfo* a = list.get(); a; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd) return Status::FromErrno("socket", errno);
    const int one = 1;
    (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd.get(), 64) != 0) {
      last = Status::FromErrno("listen on " + address, errno);
      continue;
    }
    return fd;
  }
  return last;
}

Result<UniqueFd> ConnectTcp(const std::string& address, int timeout_ms) {
  ELSA_ASSIGN_OR_RETURN(AddrInfoPtr list, Resolve(address, /*passive=*/false));
  Status last = Status::Unavailable("no address for " + address);
  for (addrinfo* a = list.get(); a; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd) return Status::FromErrno("socket", errno);
    int err = ::connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      pollfd p{fd.get(), POLLOUT, 0};
      int ready = ::poll(&p, 1, timeout_ms);
      socklen_t len = sizeof err;
      if (ready == 0) err = ETIMEDOUT;
      else if (ready < 0 || ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    }
    if (err == 0) return fd;
    last = Status::Unavailable("cannot connect to " + address + ": " + std::strerror(err));
  }
  return last;
}

TlsConnection::TlsConnection(UniqueFd fd, SslPtr ssl, size_t max_line_bytes, int write_timeout_ms)
    : ApiConnection(max_line_bytes), fd_(std::move(fd)), ssl_(std::move(ssl)), write_timeout_ms_(write_timeout_ms) {
  const int flags = ::fcntl(fd_.get(), F_GETFL);
  if (flags >= 0) (void)::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK);
  SSL_set_fd(ssl_.get(), fd_.get());
}

Result<int> TlsConnection::Drive(const std::function<int()>& step, int timeout_ms, std::string_view what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int result = 0;
    int error = 0;
    std::string detail;
    {
      std::lock_guard lock(ssl_mu_);
      ERR_clear_error();
      result = step();
      if (result > 0) return result;
      error = SSL_get_error(ssl_.get(), result);
      if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) detail = TakeOpenSslErrors("");
    }
    short events = 0;
    if (error == SSL_ERROR_WANT_READ) events = POLLIN;
    else if (error == SSL_ERROR_WANT_WRITE) events = POLLOUT;
    else if (error == SSL_ERROR_ZERO_RETURN) return Status::EndOfStream("the other end closed the connection");
    else if (error == SSL_ERROR_SYSCALL && detail.empty())
      return Status::PeerClosed("the other end closed the connection during " + std::string(what));
    else return Status::ProtocolError(std::string(what) + ": " + (detail.empty() ? "TLS error" : detail));
    int wait_ms = -1;
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return Status::Timeout(std::string(what) + ": nothing within " +
                                                    std::to_string(timeout_ms / 1000) + " s");
      wait_ms = static_cast<int>(left.count());
    }
    pollfd p{fd_.get(), events, 0};
    if (::poll(&p, 1, wait_ms) < 0 && errno != EINTR) return Status::FromErrno("poll", errno);
  }
}

Status TlsConnection::Handshake(int timeout_ms) {
  return Drive([this] { return SSL_do_handshake(ssl_.get()); }, timeout_ms, "the TLS handshake").status();
}

void DrainAndClose(UniqueFd& fd, int timeout_ms) {
  ::shutdown(fd.get(), SHUT_WR);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char discard[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd.get(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::recv(fd.get(), discard, sizeof discard, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
  }
  fd.Reset();
}

Status TlsConnection::WriteLine(std::string_view line) {
  std::string whole(line);
  whole += '\n';
  std::lock_guard lock(write_mu_);
  for (std::string_view rest = whole; !rest.empty();) {
    auto n = Drive([&] { return SSL_write(ssl_.get(), rest.data(), static_cast<int>(rest.size())); },
                   write_timeout_ms_, "a write");
    if (!n.ok()) return n.status();
    rest.remove_prefix(static_cast<size_t>(*n));
  }
  return Status::Ok();
}

Status TlsConnection::ReadMore(std::string& buffer, int timeout_ms) {
  char chunk[16384];
  auto n = Drive([&] { return SSL_read(ssl_.get(), chunk, sizeof chunk); }, timeout_ms, "a read");
  if (!n.ok()) return n.status();
  buffer.append(chunk, static_cast<size_t>(*n));
  return Status::Ok();
}

}  // namespace elsa
