// Prometheus metrics: counters, gauges and histograms whose values are atomics (every thread
// updates them without a lock), and a registry that renders them in the text exposition format
// 0.0.4 for GET /metrics. One implementation for elsa-proxy (proxy/src/metrics.h, its set) and
// elsad (engine/src/agent/agent_metrics.h, its set).
//
// No I/O: elsa-proxy's metrics listener and elsad's (metrics_http.h) serve what Render() returns.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace elsa {

// Metric names are [a-zA-Z_:][a-zA-Z0-9_:]*; label names the same without ':' ("le" is the
// histograms').
bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);

class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  // Counts one thing for as long as it lives (a connection, a websocket): a gauge kept by
  // holds cannot drift, however the thing ends.
  class Hold {
   public:
    Hold() = default;
    explicit Hold(Gauge& gauge) : gauge_(&gauge) { gauge_->Add(1); }
    Hold(Hold&& other) noexcept : gauge_(std::exchange(other.gauge_, nullptr)) {}
    Hold& operator=(Hold&& other) noexcept {
      if (this != &other) {
        Release();
        gauge_ = std::exchange(other.gauge_, nullptr);
      }
      return *this;
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() { Release(); }
    void Release() {
      if (gauge_) std::exchange(gauge_, nullptr)->Add(-1);
    }

   private:
    Gauge* gauge_ = nullptr;
  };

  void Add(int64_t n) { value_.fetch_add(n, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

class Histogram {
 public:
  // `upper_bounds`: ascending, finite; the +Inf bucket is implied.
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // one per upper bound, then +Inf (== the count)
    double sum = 0;
  };
  // Buckets are read one by one while other threads observe; the count is taken from the
  // buckets read, so +Inf and _count always agree.
  Snapshot Read() const;
  const std::vector<double>& upper_bounds() const { return upper_bounds_; }

 private:
  const std::vector<double> upper_bounds_;
  std::vector<std::atomic<uint64_t>> buckets_;  // not cumulative; the last one is +Inf
  std::atomic<double> sum_{0};
};

class MetricsRegistry {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;

  // Samples registered under one name make one family (one HELP and TYPE, then its samples),
  // so a name must keep its type. Returned references live as long as the registry.
  Counter& AddCounter(std::string name, std::string help, Labels labels = {});
  Gauge& AddGauge(std::string name, std::string help, Labels labels = {});
  // A gauge read when scraped, from a source that already knows its value (the route table, the
  // agent's sessions). Called with the registry's lock held: `read` must not register metrics.
  void AddGaugeFunction(std::string name, std::string help, std::function<double()> read, Labels labels = {});
  Histogram& AddHistogram(std::string name, std::string help, std::vector<double> upper_bounds);

  // The text exposition format, version 0.0.4; families in the order they were registered.
  std::string Render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  using Source = std::variant<std::unique_ptr<Counter>, std::unique_ptr<Gauge>, std::function<double()>,
                              std::unique_ptr<Histogram>>;
  struct Sample {
    Labels labels;
    Source source;
  };
  struct Family {
    std::string name;
    std::string help;
    Type type;
    std::vector<Sample> samples;
  };
  Sample& Add(std::string name, std::string help, Type type, Labels labels, Source source);

  mutable std::mutex mu_;  // registration against scrapes; the values themselves are atomics
  std::vector<Family> families_;
};

}  // namespace elsa
