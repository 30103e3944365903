#include "elsa/metrics.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cmath>
#include <string_view>

namespace elsa {

namespace {

bool IsNameChar(char c, bool first, bool colon_ok) {
  const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  return letter || (colon_ok && c == ':') || (!first && c >= '0' && c <= '9');
}

bool IsValidName(std::string_view name, bool colon_ok) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, colon_ok)) return false;
  }
  return true;
}

// HELP text escapes backslash and newline; label values also the double quote.
void AppendEscaped(std::string& out, std::string_view text, bool quote) {
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

std::string FormatDouble(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  std::array<char, 32> buf;
  auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);  // shortest exact form
  return ec == std::errc() ? std::string(buf.data(), end) : "NaN";
}

void AppendSample(std::string& out, std::string_view name, std::string_view suffix,
                  const MetricsRegistry::Labels& labels, const std::string* le, std::string_view value) {
  out.append(name).append(suffix);
  if (!labels.empty() || le) {
    out += '{';
    bool first = true;
    auto label = [&](std::string_view key, std::string_view text) {
      if (!first) out += ',';
      first = false;
      out.append(key).append("=\"");
      AppendEscaped(out, text, true);
      out += '"';
    };
    for (const auto& [key, text] : labels) label(key, text);
    if (le) label("le", *le);
    out += '}';
  }
  out += ' ';
  out.append(value);
  out += '\n';
}

}  // namespace

bool IsValidMetricName(std::string_view name) { return IsValidName(name, true); }
bool IsValidLabelName(std::string_view name) { return IsValidName(name, false) && name != "le"; }

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), buckets_(upper_bounds_.size() + 1) {
  assert(std::is_sorted(upper_bounds_.begin(), upper_bounds_.end()));
}

void Histogram::Observe(double value) {
  // Buckets are "less than or equal": a value on a bound belongs to that bound's bucket.
  size_t i = static_cast<size_t>(std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) -
                                 upper_bounds_.begin());
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  uint64_t running = 0;
  for (const auto& bucket : buckets_) {
    running += bucket.load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

MetricsRegistry::Sample& MetricsRegistry::Add(std::string name, std::string help, Type type, Labels labels,
                                              Source source) {
  assert(IsValidMetricName(name));
  assert(std::all_of(labels.begin(), labels.end(), [](const auto& label) { return IsValidLabelName(label.first); }));
  std::lock_guard lock(mu_);
  auto family = std::find_if(families_.begin(), families_.end(), [&](const Family& f) { return f.name == name; });
  if (family == families_.end()) {
    families_.push_back(Family{std::move(name), std::move(help), type, {}});
    family = std::prev(families_.end());
  }
  assert(family->type == type && "a metric name keeps its type");
  family->samples.push_back(Sample{std::move(labels), std::move(source)});
  return family->samples.back();
}

Counter& MetricsRegistry::AddCounter(std::string name, std::string help, Labels labels) {
  auto counter = std::make_unique<Counter>();
  Counter& ref = *counter;
  Add(std::move(name), std::move(help), Type::kCounter, std::move(labels), std::move(counter));
  return ref;
}

Gauge& MetricsRegistry::AddGauge(std::string name, std::string help, Labels labels) {
  auto gauge = std::make_unique<Gauge>();
  Gauge& ref = *gauge;
  Add(std::move(name), std::move(help), Type::kGauge, std::move(labels), std::move(gauge));
  return ref;
}

void MetricsRegistry::AddGaugeFunction(std::string name, std::string help, std::function<double()> read,
                                       Labels labels) {
  Add(std::move(name), std::move(help), Type::kGauge, std::move(labels), std::move(read));
}

Histogram& MetricsRegistry::AddHistogram(std::string name, std::string help, std::vector<double> upper_bounds) {
  auto histogram = std::make_unique<Histogram>(std::move(upper_bounds));
  Histogram& ref = *histogram;
  Add(std::move(name), std::move(help), Type::kHistogram, {}, std::move(histogram));
  return ref;
}

std::string MetricsRegistry::Render() const {
  static constexpr std::array<std::string_view, 3> kTypeNames = {"counter", "gauge", "histogram"};
  std::lock_guard lock(mu_);
  std::string out;
  for (const Family& f : families_) {
    out.append("# HELP ").append(f.name).append(" ");
    AppendEscaped(out, f.help, false);
    out.append("\n# TYPE ").append(f.name).append(" ").append(kTypeNames[static_cast<size_t>(f.type)]).append("\n");
    for (const Sample& s : f.samples) {
      if (const auto* counter = std::get_if<std::unique_ptr<Counter>>(&s.source)) {
        AppendSample(out, f.name, "", s.labels, nullptr, std::to_string((*counter)->value()));
      } else if (const auto* gauge = std::get_if<std::unique_ptr<Gauge>>(&s.source)) {
        AppendSample(out, f.name, "", s.labels, nullptr, std::to_string((*gauge)->value()));
      } else if (const auto* read = std::get_if<std::function<double()>>(&s.source)) {
        AppendSample(out, f.name, "", s.labels, nullptr, FormatDouble((*read)()));
      } else {
        const Histogram& h = *std::get<std::unique_ptr<Histogram>>(s.source);
        const Histogram::Snapshot snap = h.Read();
        for (size_t i = 0; i < snap.cumulative.size(); ++i) {
          const std::string le = i < h.upper_bounds().size() ? FormatDouble(h.upper_bounds()[i]) : "+Inf";
          AppendSample(out, f.name, "_bucket", s.labels, &le, std::to_string(snap.cumulative[i]));
        }
        AppendSample(out, f.name, "_sum", s.labels, nullptr, FormatDouble(snap.sum));
        AppendSample(out, f.name, "_count", s.labels, nullptr, std::to_string(snap.cumulative.back()));
      }
    }
  }
  return out;
}

}  // namespace elsa
