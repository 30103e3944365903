// The Prometheus registry (elsa/metrics.h): what it renders is parsed back as a scraper would,
// also while other threads count.
#include "elsa/metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "exposition.h"

namespace elsa {
namespace {

using exposition::CheckHistograms;
using exposition::Parse;

TEST(Metrics, RendersWhatWasCountedAndParsesBack) {
  MetricsRegistry r;
  Counter& ok = r.AddCounter("t_requests_total", "Requests.\nSecond line \\ here.", {{"code", "2xx"}});
  Counter& bad = r.AddCounter("t_requests_total", "Requests.\nSecond line \\ here.", {{"code", "4xx"}});
  Gauge& open = r.AddGauge("t_open", "Open things.");
  r.AddGaugeFunction("t_read_on_scrape", "Read when scraped.", [] { return 1.5; });
  Counter& odd = r.AddCounter("t_odd_total", "A label value to escape.", {{"why", "say \"hi\"\\\n"}});
  Histogram& h = r.AddHistogram("t_seconds", "Durations.", {0.01, 0.1, 1});
  ok.Increment(3);
  bad.Increment();
  odd.Increment(2);
  {
    Gauge::Hold a(open), b(open);
    Gauge::Hold moved = std::move(a);
    EXPECT_EQ(open.value(), 2);
  }
  open.Add(5);
  for (double v : {0.005, 0.01, 0.05, 0.5, 3.0}) h.Observe(v);

  const std::string text = r.Render();
  exposition::Exposition e = Parse(text);
  CheckHistograms(e);
  EXPECT_EQ(e.help["t_requests_total"], "Requests.\nSecond line \\ here.");
  EXPECT_EQ(e.type["t_requests_total"], "counter");
  EXPECT_EQ(e.type["t_open"], "gauge");
  EXPECT_EQ(e.type["t_seconds"], "histogram");
  EXPECT_EQ(e.Value("t_requests_total", {{"code", "2xx"}}), 3);
  EXPECT_EQ(e.Value("t_requests_total", {{"code", "4xx"}}), 1);
  EXPECT_EQ(e.Value("t_open"), 5);
  EXPECT_EQ(e.Value("t_read_on_scrape"), 1.5);
  EXPECT_EQ(e.Value("t_odd_total", {{"why", "say \"hi\"\\\n"}}), 2);
  // A value on a bound belongs to that bound's bucket ("less than or equal").
  EXPECT_EQ(e.Value("t_seconds_bucket", {{"le", "0.01"}}), 2);
  EXPECT_EQ(e.Value("t_seconds_bucket", {{"le", "0.1"}}), 3);
  EXPECT_EQ(e.Value("t_seconds_bucket", {{"le", "1"}}), 4);
  EXPECT_EQ(e.Value("t_seconds_bucket", {{"le", "+Inf"}}), 5);
  EXPECT_EQ(e.Value("t_seconds_count"), 5);
  EXPECT_NEAR(*e.Value("t_seconds_sum"), 3.565, 1e-9);
  EXPECT_NE(text.find("# HELP t_requests_total Requests.\\nSecond line \\\\ here.\n"), std::string::npos) << text;
}

TEST(Metrics, ScrapesWhileOtherThreadsCountStayConsistent) {
  MetricsRegistry r;
  Counter& c = r.AddCounter("t_total", "Counted.");
  Histogram& h = r.AddHistogram("t_seconds", "Observed.", {0.5, 1});
  Gauge& g = r.AddGauge("t_open", "Held.");
  constexpr int kThreads = 4, kEach = 20000;
  std::atomic<bool> done{false};
  std::thread scraper([&] {
    while (!done.load()) {
      exposition::Exposition e = Parse(r.Render());
      CheckHistograms(e);
      if (::testing::Test::HasFailure()) return;
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        Gauge::Hold hold(g);
        c.Increment();
        h.Observe((i + t) % 3 * 0.5);
      }
    });
  }
  for (auto& w : workers) w.join();
  done = true;
  scraper.join();
  exposition::Exposition e = Parse(r.Render());
  EXPECT_EQ(e.Value("t_total"), kThreads * kEach);
  EXPECT_EQ(e.Value("t_seconds_count"), kThreads * kEach);
  EXPECT_EQ(e.Value("t_open"), 0);
}

}  // namespace
}  // namespace elsa
