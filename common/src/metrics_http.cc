#include "elsa/metrics_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <string_view>

#include "elsa/fd_io.h"

namespace elsa {
namespace {

using Clock = std::chrono::steady_clock;

std::string Simple(int status, std::string_view reason, std::string_view body, std::string_view extra_headers = {}) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n";
  out += "Content-Type: text/plain; charset=utf-8\r\n";
  out.append(extra_headers);
  out += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  out.append(body);
  return out;
}

bool IsTokenChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// Where the head ends (after its blank line), or npos. Bare LF line ends are accepted, as
// RFC 9112 allows a recipient to.
size_t HeadEnd(std::string_view buf) {
  const size_t crlf = buf.find("\r\n\r\n");
  const size_t lf = buf.find("\n\n");
  if (crlf == std::string_view::npos) return lf == std::string_view::npos ? lf : lf + 2;
  if (lf == std::string_view::npos || crlf < lf) return crlf + 4;
  return lf + 2;
}

enum class Waited { kReady, kTimedOut, kStopped };

// Waits for `events` on `fd` until `deadline`, or until a byte on `wake` says the server stops
// (poll failing counts as that: only a broken descriptor makes it fail).
Waited Wait(int fd, short events, int wake, Clock::time_point deadline) {
  for (;;) {
    std::array<pollfd, 2> p{{{fd, events, 0}, {wake, POLLIN, 0}}};
    const int r = ::poll(p.data(), p.size(), MillisUntil(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || p[1].revents != 0) return Waited::kStopped;
    if (r > 0) return Waited::kReady;
    if (Clock::now() >= deadline) return Waited::kTimedOut;  // poll's milliseconds round down
  }
}

}  // namespace

std::string MetricsHttpServer::Respond(std::string_view head, const RenderFn& render) {
  const size_t line_end = head.find('\n');
  std::string_view line = head.substr(0, line_end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // method SP request-target SP HTTP-version, nothing else.
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return Simple(400, "Bad Request", "Bad Request: not an HTTP request line\n");
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  bool method_ok = !method.empty();
  for (char c : method) method_ok = method_ok && IsTokenChar(c);
  if (!method_ok || target.empty() || !version.starts_with("HTTP/1."))
    return Simple(400, "Bad Request", "Bad Request: not an HTTP/1.x request line\n");
  // The query (a scraper's ?name[]=...) selects nothing here: everything is answered.
  if (target.substr(0, target.find('?')) != "/metrics")
    return Simple(404, "Not Found", "Not Found: this port serves only /metrics\n");
  if (method != "GET" && method != "HEAD")
    return Simple(405, "Method Not Allowed", "Method Not Allowed: GET /metrics\n", "Allow: GET, HEAD\r\n");
  const std::string body = render();
  std::string out = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n";
  out += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
  if (method == "GET") out += body;
  return out;
}

Result<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& ip, uint16_t port,
                                                                     RenderFn render, Logger log,
                                                                     MetricsHttpLimits limits) {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int family = AF_INET;
  if (auto* v4 = reinterpret_cast<sockaddr_in*>(&addr); ::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    addr_len = sizeof *v4;
  } else if (auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr); ::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = family = AF_INET6;
    v6->sin6_port = htons(port);
    addr_len = sizeof *v6;
  } else {
    return Status::InvalidArgument("metrics address '" + ip + "' is not an IPv4 or IPv6 address");
  }
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno("socket", errno);
  const int one = 1;
  (void)::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const std::string where = ip + ":" + std::to_string(port);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), addr_len) != 0)
    return Status::FromErrno("bind " + where, errno);
  if (::listen(fd.get(), 16) != 0) return Status::FromErrno("listen " + where, errno);
  socklen_t len = sizeof addr;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return Status::FromErrno("getsockname", errno);
  const uint16_t bound = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&addr)->sin_port
                                                 : reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  auto server = std::make_unique<MetricsHttpServer>(Key{}, std::move(fd), bound, std::move(render), std::move(log),
                                                    limits);
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) return Status::FromErrno("pipe", errno);
  server->wake_read_.Reset(wake[0]);
  server->wake_write_.Reset(wake[1]);
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(Key, UniqueFd listener, uint16_t port, RenderFn render, Logger log,
                                     MetricsHttpLimits limits)
    : listener_(std::move(listener)), port_(port), render_(std::move(render)), log_(std::move(log)), limits_(limits) {}

MetricsHttpServer::~MetricsHttpServer() {
  if (thread_.joinable()) {
    const char stop = 's';
    (void)!::write(wake_write_.get(), &stop, 1);
    thread_.join();
  }
}

void MetricsHttpServer::Serve() {
  for (;;) {
    if (Wait(listener_.get(), POLLIN, wake_read_.get(), Clock::time_point::max()) != Waited::kReady) return;
    UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client) {
      // Out of descriptors or memory: pause rather than spin (a stop is seen at the top).
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        log_.Warning(Status::FromErrno("metrics: accept", errno).message());
        pollfd p{wake_read_.get(), POLLIN, 0};
        (void)::poll(&p, 1, 200);
      }
      continue;
    }
    Answer(client.get());
  }
}

void MetricsHttpServer::Answer(int fd) {
  const int wake = wake_read_.get();
  std::string buf;
  std::string answer;
  const auto read_deadline = Clock::now() + limits_.request_timeout;
  for (;;) {
    if (const size_t end = HeadEnd(buf); end != std::string::npos) {
      answer = Respond(std::string_view(buf).substr(0, end), render_);
      break;
    }
    if (buf.size() > limits_.max_request_bytes) {
      answer = Simple(431, "Request Header Fields Too Large", "Request Header Fields Too Large\n");
      break;
    }
    if (const Waited w = Wait(fd, POLLIN, wake, read_deadline); w != Waited::kReady) {
      if (w == Waited::kStopped) return;
      answer = Simple(408, "Request Timeout", "Request Timeout\n");
      break;
    }
    char chunk[2048];
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
    if (n == 0) return;  // gone before asking anything whole
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return;
    }
    buf.append(chunk, static_cast<size_t>(n));
  }
  const auto write_deadline = Clock::now() + limits_.response_timeout;
  for (size_t sent = 0; sent < answer.size();) {
    if (Wait(fd, POLLOUT, wake, write_deadline) != Waited::kReady) return;
    const ssize_t n = ::send(fd, answer.data() + sent, answer.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return;
    }
    sent += static_cast<size_t>(n);
  }
  // Closing with unread bytes (an oversized head, a body) would reset the connection and could
  // destroy the answer before the client reads it: say we are done, then drain a little.
  (void)::shutdown(fd, SHUT_WR);
  const auto drain_deadline = Clock::now() + std::chrono::milliseconds(200);
  char sink[4096];
  for (size_t drained = 0; drained < (1u << 20) && Wait(fd, POLLIN, wake, drain_deadline) == Waited::kReady;) {
    const ssize_t n = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
    if (n > 0) drained += static_cast<size_t>(n);
  }
}

}  // namespace elsa
