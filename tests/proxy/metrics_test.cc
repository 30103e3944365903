// The Prometheus registry: what it renders is parsed back as a scraper would (every sample line
// `name{labels} value`, HELP and TYPE before a family's samples, histogram buckets cumulative
// with +Inf equal to _count), also while other threads count.
#include "metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

namespace elsa::proxy {
namespace {

struct ParsedSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> help;  // family -> text (unescaped)
  std::map<std::string, std::string> type;
  std::vector<ParsedSample> samples;

  std::optional<double> Value(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    for (const auto& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return std::nullopt;
  }
};

// Reads "\\", "\n" and (in label values) "\"" escapes up to `end`; false on a bad escape.
bool Unescape(std::string_view text, size_t& i, char end, std::string& out) {
  while (i < text.size() && text[i] != end) {
    if (text[i] == '\\') {
      if (++i == text.size()) return false;
      if (text[i] == 'n') {
        out += '\n';
      } else if (text[i] == '\\' || text[i] == '"') {
        out += text[i];
      } else {
        return false;
      }
    } else {
      out += text[i];
    }
    ++i;
  }
  return true;
}

// The family a sample belongs to: histograms' samples carry a suffix.
std::string FamilyOf(const std::string& sample, const std::map<std::string, std::string>& types) {
  for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
    if (sample.size() > suffix.size() && sample.ends_with(suffix)) {
      std::string base = sample.substr(0, sample.size() - suffix.size());
      if (auto it = types.find(base); it != types.end() && it->second == "histogram") return base;
    }
  }
  return sample;
}

double ParseValue(const std::string& text) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  size_t used = 0;
  double v = std::stod(text, &used);
  EXPECT_EQ(used, text.size()) << "value '" << text << "'";
  return v;
}

// Parses the text format 0.0.4 strictly, failing the test on anything a scraper would reject.
Exposition Parse(const std::string& text) {
  Exposition e;
  EXPECT_TRUE(text.empty() || text.back() == '\n') << "the last line must end with a newline";
  std::istringstream in(text);
  std::string line, family_in_progress;
  std::set<std::string> finished;  // a family's samples must be contiguous
  while (std::getline(in, line)) {
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
      const bool is_help = line[2] == 'H';
      size_t space = line.find(' ', 7);
      std::string name = line.substr(7, space - 7);
      EXPECT_TRUE(IsValidMetricName(name)) << line;
      EXPECT_NE(space, std::string::npos) << line;
      std::string rest = space == std::string::npos ? "" : line.substr(space + 1);
      EXPECT_FALSE(e.samples.size() && FamilyOf(e.samples.back().name, e.type) == name)
          << name << ": HELP/TYPE after its samples";
      EXPECT_FALSE(finished.contains(name)) << name << " appears twice";
      if (is_help) {
        size_t i = 0;
        std::string unescaped;
        EXPECT_TRUE(Unescape(rest, i, '\0', unescaped)) << line;
        EXPECT_FALSE(e.help.contains(name)) << "second HELP for " << name;
        e.help[name] = unescaped;
      } else {
        EXPECT_TRUE(rest == "counter" || rest == "gauge" || rest == "histogram") << line;
        EXPECT_FALSE(e.type.contains(name)) << "second TYPE for " << name;
        e.type[name] = rest;
      }
      continue;
    }
    EXPECT_FALSE(line.empty() || line[0] == '#') << "unexpected line '" << line << "'";
    ParsedSample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = line.substr(0, i);
    EXPECT_TRUE(IsValidMetricName(s.name)) << line;
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        if (eq == std::string::npos || eq + 2 > line.size()) {
          ADD_FAILURE() << "bad labels: " << line;
          return e;
        }
        std::string key = line.substr(i, eq - i);
        EXPECT_TRUE(IsValidLabelName(key) || key == "le") << line;
        EXPECT_EQ(line[eq + 1], '"') << line;
        i = eq + 2;
        std::string value;
        if (!Unescape(line, i, '"', value) || i + 1 >= line.size()) {
          ADD_FAILURE() << "unterminated label value: " << line;
          return e;
        }
        EXPECT_FALSE(s.labels.contains(key)) << line;
        s.labels[key] = value;
        if (line[++i] == ',') ++i;
      }
      ++i;  // '}'
    }
    if (i >= line.size() || line[i] != ' ') {
      ADD_FAILURE() << "no value: " << line;
      return e;
    }
    std::string value = line.substr(i + 1);
    EXPECT_EQ(value.find(' '), std::string::npos) << "timestamps are not used: " << line;
    s.value = ParseValue(value);
    const std::string family = FamilyOf(s.name, e.type);
    EXPECT_TRUE(e.help.contains(family) && e.type.contains(family)) << s.name << ": no HELP/TYPE before it";
    if (family != family_in_progress) {
      if (!family_in_progress.empty()) finished.insert(family_in_progress);
      EXPECT_FALSE(finished.contains(family)) << family << ": samples not contiguous";
      family_in_progress = family;
    }
    e.samples.push_back(std::move(s));
  }
  return e;
}

// Every histogram: le ascending ending in +Inf, counts cumulative, +Inf == _count.
void CheckHistograms(const Exposition& e) {
  for (const auto& [family, type] : e.type) {
    if (type != "histogram") continue;
    std::vector<std::pair<double, double>> buckets;  // le, count
    for (const auto& s : e.samples) {
      if (s.name == family + "_bucket") buckets.emplace_back(ParseValue(s.labels.at("le")), s.value);
    }
    ASSERT_FALSE(buckets.empty()) << family;
    EXPECT_TRUE(std::isinf(buckets.back().first)) << family << ": the last bucket must be +Inf";
    for (size_t i = 1; i < buckets.size(); ++i) {
      EXPECT_LT(buckets[i - 1].first, buckets[i].first) << family;
      EXPECT_LE(buckets[i - 1].second, buckets[i].second) << family << ": buckets are not cumulative";
    }
    EXPECT_EQ(buckets.back().second, e.Value(family + "_count")) << family;
    EXPECT_TRUE(e.Value(family + "_sum")) << family;
  }
}

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
  Exposition e = Parse(text);
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
  Exposition e = Parse(r.Render());
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

TEST(Metrics, ScrapesWhileOtherThreadsCountStayConsistent) {
  MetricsRegistry r;
  Counter& c = r.AddCounter("t_total", "Counted.");
  Histogram& h = r.AddHistogram("t_seconds", "Observed.", {0.5, 1});
  Gauge& g = r.AddGauge("t_open", "Held.");
  constexpr int kThreads = 4, kEach = 20000;
  std::atomic<bool> done{false};
  std::thread scraper([&] {
    while (!done.load()) {
      Exposition e = Parse(r.Render());
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
  Exposition e = Parse(r.Render());
  EXPECT_EQ(e.Value("t_total"), kThreads * kEach);
  EXPECT_EQ(e.Value("t_seconds_count"), kThreads * kEach);
  EXPECT_EQ(e.Value("t_open"), 0);
}

}  // namespace
}  // namespace elsa::proxy
