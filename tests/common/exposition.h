// A strict parser of the Prometheus text format 0.0.4 for the tests: every sample line
// `name{labels} value`, HELP and TYPE before a family's samples, families contiguous, histogram
// buckets cumulative with +Inf equal to _count. Anything a scraper would reject fails the test.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "elsa/metrics.h"

namespace elsa::exposition {

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
inline bool Unescape(std::string_view text, size_t& i, char end, std::string& out) {
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
inline std::string FamilyOf(const std::string& sample, const std::map<std::string, std::string>& types) {
  for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
    if (sample.size() > suffix.size() && sample.ends_with(suffix)) {
      std::string base = sample.substr(0, sample.size() - suffix.size());
      if (auto it = types.find(base); it != types.end() && it->second == "histogram") return base;
    }
  }
  return sample;
}

inline double ParseValue(const std::string& text) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  size_t used = 0;
  double v = std::stod(text, &used);
  EXPECT_EQ(used, text.size()) << "value '" << text << "'";
  return v;
}

// Parses the text format 0.0.4 strictly, failing the test on anything a scraper would reject.
inline Exposition Parse(const std::string& text) {
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
inline void CheckHistograms(const Exposition& e) {
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


}  // namespace elsa::exposition
