#include "metrics.h"

#include <string>
#include <string_view>

namespace elsa::proxy {

ProxyMetrics::ProxyMetrics(MetricsRegistry& registry, std::chrono::system_clock::time_point started)
    : client_connections(registry.AddGauge("elsa_proxy_client_connections",
                                           "Client connections open on the public listener, websockets included.")),
      websockets_open(registry.AddGauge("elsa_proxy_websockets_open",
                                        "Browser websockets open, whether their backend is connected or paused.")),
      websockets_held(registry.AddCounter(
          "elsa_proxy_websockets_held_total",
          "Times a browser websocket stayed open across a pause of its route and went on after the resume.")),
      websocket_messages_buffered(registry.AddCounter(
          "elsa_proxy_websocket_messages_buffered_total",
          "Browser websocket messages held while their backend was paused, replayed on resume.")),
      route_pause_seconds(registry.AddHistogram(
          "elsa_proxy_route_pause_seconds", "How long routes stayed paused for a migration, pause to resume.",
          {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10})) {
  static constexpr std::array<std::string_view, 6> kClasses = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};
  for (size_t i = 0; i < kClasses.size(); ++i) {
    requests_by_class_[i] = &registry.AddCounter(
        "elsa_proxy_http_requests_total",
        "HTTP requests answered on the public listener, by status class: the backend's answer or elsa-proxy's "
        "own (404, 503, 4xx for bad requests); websocket upgrades count as 1xx.",
        {{"code", std::string(kClasses[i])}});
  }
  static constexpr std::array<std::string_view, kProxyErrorCount> kReasons = {
      "bad_request",         "no_route",           "bad_target",
      "backend_unreachable", "backend_timeout",    "backend_error",
      "response_interrupted", "websocket_backend_lost", "websocket_resume_failed"};
  for (size_t i = 0; i < kReasons.size(); ++i) {
    errors_[i] = &registry.AddCounter("elsa_proxy_errors_total",
                                      "Requests elsa-proxy answered with an error itself, and connections it gave "
                                      "up, by reason.",
                                      {{"reason", std::string(kReasons[i])}});
  }
  const double started_s = std::chrono::duration<double>(started.time_since_epoch()).count();
  registry.AddGaugeFunction("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                            [started_s] { return started_s; });
}

void ProxyMetrics::Answered(int status) {
  const size_t status_class = status >= 100 && status <= 599 ? static_cast<size_t>(status / 100 - 1) : 5;
  requests_by_class_[status_class]->Increment();
}

}  // namespace elsa::proxy
