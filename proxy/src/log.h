// Log lines in configurable-http-proxy's shape ("<time> [ElsaProxy] info: ..."), or one JSON
// object a line as elsad writes them (--log-format json); one write(2) per line so concurrent
// threads never interleave. Passed around, never global.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

#include "elsa/proxy/options.h"

namespace elsa::proxy {

class Logger {
 public:
  explicit Logger(LogLevel level, int fd = 2, LogFormat format = LogFormat::kText)
      : level_(level), fd_(fd), format_(format) {}

  bool Enabled(LogLevel level) const { return level >= level_; }
  void Write(LogLevel level, std::string_view message) const;

  template <typename... Args>
  void Debug(const Args&... args) const { Log(LogLevel::kDebug, args...); }
  template <typename... Args>
  void Info(const Args&... args) const { Log(LogLevel::kInfo, args...); }
  template <typename... Args>
  void Warn(const Args&... args) const { Log(LogLevel::kWarn, args...); }
  template <typename... Args>
  void Error(const Args&... args) const { Log(LogLevel::kError, args...); }

  template <typename... Args>
  void Log(LogLevel level, const Args&... args) const {
    if (!Enabled(level)) return;
    std::ostringstream out;
    (out << ... << args);
    Write(level, out.str());
  }

 private:
  LogLevel level_;
  int fd_;
  LogFormat format_;
};

// A URL for a log line: no query string (tokens travel there).
std::string_view LogUrl(std::string_view url);

}  // namespace elsa::proxy
