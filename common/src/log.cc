#include "elsa/log.h"

#include <cstdio>

namespace elsa {

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

Logger::Logger(Sink sink)
    : sink_(std::make_shared<const Sink>(sink ? std::move(sink) : Sink([](const LogLine& line) {
        std::fprintf(stderr, "%s: %s\n", std::string(LogLevelName(line.level)).c_str(), Format(line).c_str());
      }))) {}

void Logger::Write(LogLevel level, std::string_view message) const {
  (*sink_)(LogLine{level, std::string(message), context_});
}

Logger Logger::With(std::string key, std::string value) const {
  Logger narrowed = *this;
  narrowed.context_.emplace_back(std::move(key), std::move(value));
  return narrowed;
}

std::string Logger::Format(const LogLine& line) {
  std::string out = line.message;
  if (!line.context.empty()) {
    out += " [";
    for (size_t i = 0; i < line.context.size(); ++i) {
      if (i) out += ' ';
      out += line.context[i].first;
      out += '=';
      out += line.context[i].second;
    }
    out += ']';
  }
  return out;
}

}  // namespace elsa
