// elsa-proxy's metric set: Prometheus naming, and what each call counts, parsed back as a
// scraper would (the registry itself: tests/common/metrics_test.cc).
#include "metrics.h"

#include <gtest/gtest.h>

#include <chrono>

#include "exposition.h"

namespace elsa::proxy {
namespace {

using exposition::CheckHistograms;
using exposition::Parse;

TEST(Metrics, ProxySetFollowsPrometheusNaming) {
  MetricsRegistry r;
  ProxyMetrics m(r, std::chrono::system_clock::time_point(std::chrono::seconds(1700000000)));
  m.Answered(200);
  m.Answered(204);
  m.Answered(101);
  m.Refused(503, ProxyError::kBackendUnreachable);
  m.Answered(799);  // a backend's odd status is still counted, under "other"
  m.Failed(ProxyError::kWebsocketResumeFailed);
  m.route_pause_seconds.Observe(0.2);
  exposition::Exposition e = Parse(r.Render());
  CheckHistograms(e);
  for (const auto& [family, type] : e.type) {
    EXPECT_TRUE(family.starts_with("elsa_proxy_") || family.starts_with("process_")) << family;
    EXPECT_EQ(type == "counter", family.ends_with("_total")) << family;
    EXPECT_FALSE(e.help[family].empty()) << family;
  }
  EXPECT_EQ(e.Value("elsa_proxy_http_requests_total", {{"code", "2xx"}}), 2);
  EXPECT_EQ(e.Value("elsa_proxy_http_requests_total", {{"code", "1xx"}}), 1);
  EXPECT_EQ(e.Value("elsa_proxy_http_requests_total", {{"code", "5xx"}}), 1);
  EXPECT_EQ(e.Value("elsa_proxy_http_requests_total", {{"code", "3xx"}}), 0);  // present before it happens
  EXPECT_EQ(e.Value("elsa_proxy_http_requests_total", {{"code", "other"}}), 1);
  EXPECT_EQ(e.Value("elsa_proxy_errors_total", {{"reason", "backend_unreachable"}}), 1);
  EXPECT_EQ(e.Value("elsa_proxy_errors_total", {{"reason", "websocket_resume_failed"}}), 1);
  EXPECT_EQ(e.Value("elsa_proxy_errors_total", {{"reason", "no_route"}}), 0);
  EXPECT_EQ(e.Value("elsa_proxy_route_pause_seconds_count"), 1);
  EXPECT_EQ(e.Value("elsa_proxy_route_pause_seconds_bucket", {{"le", "0.1"}}), 0);
  EXPECT_EQ(e.Value("elsa_proxy_route_pause_seconds_bucket", {{"le", "0.25"}}), 1);
  EXPECT_EQ(e.Value("process_start_time_seconds"), 1700000000);
  EXPECT_EQ(e.type["process_start_time_seconds"], "gauge");
}

}  // namespace
}  // namespace elsa::proxy
