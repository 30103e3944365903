// A minimal HTTP/1.1 responder for Prometheus scrapes: GET (or HEAD) /metrics answers what
// `render` returns in the text format 0.0.4; any other path is 404, any other method 405.
//
// One thread, one connection at a time, `Connection: close` after every answer: a scraper asks
// every few seconds, so concurrency would only widen what a hostile client can hold. What one
// connection may cost is bounded instead: the request head's size, the time to send it, and the
// time to take the answer. Anything else (bad bytes, an early close, a reset) ends that
// connection only, never the thread or the program it runs in.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "elsa/log.h"
#include "elsa/status.h"
#include "elsa/unique_fd.h"

namespace elsa {

struct MetricsHttpLimits {
  size_t max_request_bytes = 8192;  // request line and headers; larger: 431
  std::chrono::milliseconds request_timeout{3000};  // to send them; slower: 408
  std::chrono::milliseconds response_timeout{10000};  // to take the answer; slower: dropped
};

class MetricsHttpServer {
 public:
  using RenderFn = std::function<std::string()>;

  // Listens on `ip` (IPv4 or IPv6 literal) and `port` (0: any free one) and serves from a thread
  // of its own until destroyed.
  static Result<std::unique_ptr<MetricsHttpServer>> Start(const std::string& ip, uint16_t port, RenderFn render,
                                                           Logger log, MetricsHttpLimits limits = {});
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  uint16_t port() const { return port_; }

  // The whole answer (status line, headers, body) to one complete request head. Pure: the
  // tests feed it what no socket test reaches easily.
  static std::string Respond(std::string_view head, const RenderFn& render);

 private:
  struct Key {};  // only Start() makes one

 public:
  MetricsHttpServer(Key, UniqueFd listener, uint16_t port, RenderFn render, Logger log, MetricsHttpLimits limits);

 private:
  void Serve();
  void Answer(int fd);

  UniqueFd listener_;
  UniqueFd wake_read_, wake_write_;  // a byte here stops Serve() wherever it waits
  uint16_t port_;
  RenderFn render_;
  Logger log_;
  MetricsHttpLimits limits_;
  std::thread thread_;
};

}  // namespace elsa
