// Where a library's diagnostics go. Components take a Logger from whoever made them (elsad
// gives its own, which writes to its log in text or JSON); nothing in a library writes to
// stderr itself. A Logger is a small value: copy it, and narrow it with With() so every line of
// an operation says which session and which operation it is about.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "elsa/status.h"

namespace elsa {

enum class LogLevel { kInfo, kWarning, kError };
std::string_view LogLevelName(LogLevel level);  // "info", "warning", "error"

// How a program writes its log: text for people, JSON (one object a line) for log shippers.
enum class LogFormat { kText, kJson };
// "text" or "json", as --log-format takes it.
Result<LogFormat> ParseLogFormat(std::string_view name);

using LogContext = std::vector<std::pair<std::string, std::string>>;

struct LogLine {
  LogLevel level = LogLevel::kInfo;
  std::string message;
  // What the line is about, outermost first: {"session", "alice"}, {"op", "migrate"}.
  LogContext context;
};

class Logger {
 public:
  using Sink = std::function<void(const LogLine& line)>;

  // Lines go to `sink`; without one, to stderr as "LEVEL [k=v ...] message".
  explicit Logger(Sink sink = {});

  void Info(std::string_view message) const { Write(LogLevel::kInfo, message); }
  void Warning(std::string_view message) const { Write(LogLevel::kWarning, message); }
  void Error(std::string_view message) const { Write(LogLevel::kError, message); }
  void Write(LogLevel level, std::string_view message) const;

  // The same sink, with `key=value` added to every line's context.
  Logger With(std::string key, std::string value) const;

  // "message [k=v k=v]": how the default sink and elsad's text format print a line.
  static std::string Format(const LogLine& line);

 private:
  std::shared_ptr<const Sink> sink_;
  LogContext context_;
};

// A sink for a program's own log: each line is handed whole to `write` (one write(2) there keeps
// threads' lines apart). kText: "PROGRAM: [warning: |error: ]message [k=v ...]". kJson: see
// JsonLogLine, timed when written.
Logger::Sink ProgramLogSink(std::string program, LogFormat format, std::function<void(std::string_view line)> write);

// One line of a JSON log, newline-terminated: {"time": "2025-01-31T09:04:05.123456Z", "level",
// "message", then each context field as its own key (a later With() of the same key wins; a
// key that would hide time, level or message becomes "context_KEY"). Bytes that are not UTF-8
// (a file name quoted from CRIU's log) are replaced, never thrown on: it goes through DumpJson.
std::string JsonLogLine(std::chrono::system_clock::time_point time, std::string_view level, std::string_view message,
                        const LogContext& context = {});

// ISO 8601 in UTC with microseconds: "2025-01-31T09:04:05.123456Z".
std::string FormatUtcMicros(std::chrono::system_clock::time_point time);

}  // namespace elsa
