// Where a library's diagnostics go. Components take a Logger from whoever made them (elsad
// gives its own, which writes to its log in text or JSON); nothing in a library writes to
// stderr itself. A Logger is a small value: copy it, and narrow it with With() so every line of
// an operation says which session and which operation it is about.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace elsa {

enum class LogLevel { kInfo, kWarning, kError };
std::string_view LogLevelName(LogLevel level);  // "info", "warning", "error"

struct LogLine {
  LogLevel level = LogLevel::kInfo;
  std::string message;
  // What the line is about, outermost first: {"session", "alice"}, {"op", "migrate"}.
  std::vector<std::pair<std::string, std::string>> context;
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
  std::vector<std::pair<std::string, std::string>> context_;
};

}  // namespace elsa
