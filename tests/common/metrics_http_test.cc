// The /metrics responder on a real socket: what a scraper gets, and what hostile or broken
// clients get (a wrong path or method, garbage, an endless head, silence, an early close),
// after each of which it still answers the next scrape.
#include "elsa/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>

#include "elsa/unique_fd.h"

namespace elsa {
namespace {

using namespace std::chrono_literals;

UniqueFd Connect(uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  return fd;
}

// Everything the server sends until it closes (or 10 s pass).
std::string ReadAll(int fd) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string Exchange(uint16_t port, std::string_view request) {
  UniqueFd fd = Connect(port);
  EXPECT_EQ(::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  return ReadAll(fd.get());
}

std::string StatusLine(const std::string& response) { return response.substr(0, response.find("\r\n")); }

std::string Body(const std::string& response) {
  const size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string() : response.substr(at + 4);
}

class MetricsHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MetricsHttpLimits limits;
    limits.request_timeout = 300ms;
    auto started = MetricsHttpServer::Start(
        "127.0.0.1", 0, [this] { return "# HELP t_total T.\n# TYPE t_total counter\nt_total " +
                                        std::to_string(++scrapes_) + "\n"; },
        Logger(), limits);
    ASSERT_TRUE(started.ok()) << started.status().ToString();
    server_ = std::move(*started);
  }
  void ExpectStillServing() {
    const std::string r = Exchange(server_->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(StatusLine(r), "HTTP/1.1 200 OK") << r;
  }

  std::atomic<int> scrapes_{0};
  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpTest, ServesMetrics) {
  const std::string r = Exchange(server_->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(StatusLine(r), "HTTP/1.1 200 OK");
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), std::string::npos) << r;
  EXPECT_EQ(Body(r), "# HELP t_total T.\n# TYPE t_total counter\nt_total 1\n");
  EXPECT_NE(r.find("Content-Length: " + std::to_string(Body(r).size()) + "\r\n"), std::string::npos) << r;
  // A query selects nothing; bare LF line ends and HTTP/1.0 are accepted.
  EXPECT_EQ(Body(Exchange(server_->port(), "GET /metrics?name[]=x HTTP/1.0\n\n")),
            "# HELP t_total T.\n# TYPE t_total counter\nt_total 2\n");
  const std::string head = Exchange(server_->port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(StatusLine(head), "HTTP/1.1 200 OK");
  EXPECT_EQ(Body(head), "");
}

TEST_F(MetricsHttpTest, OtherPathsAndMethodsAreRefused) {
  for (const char* path : {"/", "/metrics/", "/metricsx", "//metrics", "/api/sessions", "*"}) {
    const std::string r = Exchange(server_->port(), "GET " + std::string(path) + " HTTP/1.1\r\n\r\n");
    EXPECT_EQ(StatusLine(r), "HTTP/1.1 404 Not Found") << path;
  }
  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "get"}) {
    const std::string r = Exchange(server_->port(), std::string(method) + " /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    EXPECT_EQ(StatusLine(r), "HTTP/1.1 405 Method Not Allowed") << method;
    EXPECT_NE(r.find("Allow: GET, HEAD\r\n"), std::string::npos) << r;
  }
  EXPECT_EQ(scrapes_, 0) << "nothing was rendered for a refused request";
}

TEST_F(MetricsHttpTest, GarbageIsABadRequest) {
  for (std::string_view junk : {std::string_view("\r\n\r\n"), std::string_view("GET /metrics\r\n\r\n"),
                                std::string_view("GET  /metrics HTTP/1.1\r\n\r\n"),
                                std::string_view("GET /metrics HTTP/1.1 extra\r\n\r\n"),
                                std::string_view("GET /metrics SPDY/3\r\n\r\n"),
                                std::string_view("G(T /metrics HTTP/1.1\r\n\r\n"),
                                std::string_view("\x00\xff\x16\x03\x01 \x02\x00\n\n", 11)}) {
    const std::string r = Exchange(server_->port(), junk);
    EXPECT_EQ(StatusLine(r), "HTTP/1.1 400 Bad Request") << junk;
  }
  ExpectStillServing();
}

TEST_F(MetricsHttpTest, AnEndlessHeadIsCutOff) {
  std::string huge = "GET /metrics HTTP/1.1\r\n";
  while (huge.size() < 64 * 1024) huge += "X-Filler: " + std::string(100, 'a') + "\r\n";
  const std::string r = Exchange(server_->port(), huge);
  EXPECT_EQ(StatusLine(r), "HTTP/1.1 431 Request Header Fields Too Large");
  ExpectStillServing();
}

TEST_F(MetricsHttpTest, SilenceTimesOutAndAnEarlyCloseIsHarmless) {
  {
    UniqueFd idle = Connect(server_->port());
    const auto start = std::chrono::steady_clock::now();
    const std::string r = ReadAll(idle.get());
    EXPECT_EQ(StatusLine(r), "HTTP/1.1 408 Request Timeout");
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  }
  {
    UniqueFd half = Connect(server_->port());
    ASSERT_EQ(::send(half.get(), "GET /met", 8, MSG_NOSIGNAL), 8);
  }  // closed half-way
  {
    // Asks, then resets instead of reading the answer.
    UniqueFd rude = Connect(server_->port());
    const linger reset{1, 0};
    ASSERT_EQ(::setsockopt(rude.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset), 0);
    ASSERT_GT(::send(rude.get(), "GET /metrics HTTP/1.1\r\n\r\n", 25, MSG_NOSIGNAL), 0);
  }
  ExpectStillServing();
}

TEST(MetricsHttp, RefusesAnAddressThatIsNotOne) {
  EXPECT_FALSE(MetricsHttpServer::Start("localhost", 0, [] { return std::string(); }, Logger()).ok());
  EXPECT_FALSE(MetricsHttpServer::Start("256.0.0.1", 0, [] { return std::string(); }, Logger()).ok());
  auto v6 = MetricsHttpServer::Start("::1", 0, [] { return std::string(); }, Logger());
  EXPECT_TRUE(v6.ok() || v6.status().message().find("bind") != std::string::npos) << v6.status().ToString();
}

}  // namespace
}  // namespace elsa
