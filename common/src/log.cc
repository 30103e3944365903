#include "elsa/log.h"

#include <cstdio>
#include <ctime>

#include "elsa/json_reader.h"

namespace elsa {

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

Result<LogFormat> ParseLogFormat(std::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return Status::InvalidArgument("--log-format: '" + std::string(name) + "' is not text or json");
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

Logger::Sink ProgramLogSink(std::string program, LogFormat format, std::function<void(std::string_view line)> write) {
  if (format == LogFormat::kJson) {
    return [write = std::move(write)](const LogLine& line) {
      write(JsonLogLine(std::chrono::system_clock::now(), LogLevelName(line.level), line.message, line.context));
    };
  }
  return [program = std::move(program), write = std::move(write)](const LogLine& line) {
    std::string text = program + ": ";
    if (line.level != LogLevel::kInfo) text.append(LogLevelName(line.level)).append(": ");
    text += Logger::Format(line);
    text += '\n';
    write(text);
  };
}

std::string JsonLogLine(std::chrono::system_clock::time_point time, std::string_view level, std::string_view message,
                        const LogContext& context) {
  nlohmann::ordered_json j;
  j["time"] = FormatUtcMicros(time);
  j["level"] = level;
  j["message"] = message;
  for (const auto& [key, value] : context) {
    const bool hides_own_field = key == "time" || key == "level" || key == "message";
    j[hides_own_field ? "context_" + key : key] = value;
  }
  return DumpJson(j) + "\n";
}

std::string FormatUtcMicros(std::chrono::system_clock::time_point time) {
  using std::chrono::duration_cast;
  using std::chrono::microseconds;
  using std::chrono::seconds;
  // floor, not truncation toward zero: a time before 1970 still gets micros in [0, 1e6).
  const auto whole = std::chrono::floor<seconds>(time);
  const auto micros = duration_cast<microseconds>(time - whole).count();
  const std::time_t secs = std::chrono::system_clock::to_time_t(whole);
  std::tm utc{};
  gmtime_r(&secs, &utc);
  char out[64];
  std::snprintf(out, sizeof out, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<long long>(micros));
  return out;
}

}  // namespace elsa
