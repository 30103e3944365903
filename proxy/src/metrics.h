// ProxyMetrics, elsa-proxy's own set of Prometheus metrics, on the common registry
// (elsa/metrics.h). The metrics listener (http_session.cc) serves what the registry renders.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>

#include "elsa/metrics.h"

namespace elsa::proxy {

// Why elsa-proxy answered an error itself, or gave a connection up (reason="..." of
// elsa_proxy_errors_total).
enum class ProxyError {
  kBadRequest,            // malformed, too large, too slow, '.' segments: 400/408/431
  kNoRoute,               // 404
  kBadTarget,             // the route's target cannot be used: 503
  kBackendUnreachable,    // connecting to the backend failed: 503
  kBackendTimeout,        // the backend did not answer in time (--proxy-timeout): 503
  kBackendError,          // the backend broke the exchange before answering: 503
  kResponseInterrupted,   // the answer stopped half-way (backend or client gone)
  kWebsocketBackendLost,  // a backend websocket dropped while open: browser closed with 1011
  kWebsocketResumeFailed, // no reconnect before the resume deadline: browser closed with 1011
};
inline constexpr size_t kProxyErrorCount = 9;

// Everything elsa-proxy counts. The route gauges are added by the migration controller,
// which knows which routes are paused (AddRouteGauges in migration.h).
class ProxyMetrics {
 public:
  ProxyMetrics(MetricsRegistry& registry, std::chrono::system_clock::time_point started);

  // A request on the public listener got `status` (from the backend, or our own).
  void Answered(int status);
  void Failed(ProxyError why) { errors_[static_cast<size_t>(why)]->Increment(); }
  // Our own error answer: counted as both.
  void Refused(int status, ProxyError why) {
    Answered(status);
    Failed(why);
  }

  Gauge& client_connections;
  Gauge& websockets_open;
  Counter& websockets_held;
  Counter& websocket_messages_buffered;
  Histogram& route_pause_seconds;

 private:
  std::array<Counter*, 6> requests_by_class_;  // 1xx .. 5xx, then any other status
  std::array<Counter*, kProxyErrorCount> errors_;
};

}  // namespace elsa::proxy
