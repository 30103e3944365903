#include "elsa/page_server/loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <chrono>

#include "socket_io.h"

namespace elsa::page_server {
namespace {

bool SameAddress(const sockaddr_in& a, const sockaddr_in& b) {
  return a.sin_family == b.sin_family && a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr;
}

}  // namespace

Result<LoopbackPair> ConnectedLoopbackPair() {
  uint16_t port = 0;
  ELSA_ASSIGN_OR_RETURN(UniqueFd listener, ListenOn("127.0.0.1", 0, &port));
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!client) return Status::FromErrno("socket", errno);
  sockaddr_in server{};
  server.sin_family = AF_INET;
  server.sin_port = htons(port);
  server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(client.get(), reinterpret_cast<sockaddr*>(&server), sizeof server) != 0)
    return Status::FromErrno("connecting a loopback pair", errno);
  sockaddr_in mine{};
  socklen_t len = sizeof mine;
  if (::getsockname(client.get(), reinterpret_cast<sockaddr*>(&mine), &len) != 0)
    return Status::FromErrno("getsockname", errno);
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  for (;;) {
    ELSA_ASSIGN_OR_RETURN(UniqueFd accepted, AcceptOne(listener.get(), deadline));
    sockaddr_in peer{};
    len = sizeof peer;
    if (::getpeername(accepted.get(), reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    if (!SameAddress(peer, mine)) continue;  // someone else's: closed unanswered
    int one = 1;
    ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return LoopbackPair{std::move(accepted), std::move(client)};
  }
}

void Hangup(int fd) {
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

}  // namespace elsa::page_server
