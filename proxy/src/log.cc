#include "log.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "elsa/fd_io.h"

namespace elsa::proxy {

namespace {

// CHP's shape of line: local time to the millisecond, the logger's name, the level.
std::string TextLine(std::chrono::system_clock::time_point now, LogLevel level, std::string_view message) {
  std::time_t secs = std::chrono::system_clock::to_time_t(now);
  int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  localtime_r(&secs, &tm);
  char stamp[48];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02d %02d:%02d:%02d.%03d", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  std::string line;
  line.reserve(message.size() + 64);
  line.append(stamp).append(" [ElsaProxy] ").append(LogLevelName(level)).append(": ");
  line.append(message).push_back('\n');
  return line;
}

// The level names elsad's JSON lines use, so that one query reads both programs' logs.
std::string_view JsonLevelName(LogLevel level) { return level == LogLevel::kWarn ? "warning" : LogLevelName(level); }

}  // namespace

void Logger::Write(LogLevel level, std::string_view message) const {
  if (!Enabled(level)) return;
  auto now = std::chrono::system_clock::now();
  std::string line = format_ == LogFormat::kJson ? JsonLogLine(now, JsonLevelName(level), message) : TextLine(now, level, message);
  (void)WriteFully(fd_, line, "log");  // nowhere to report a failing log
}

std::string_view LogUrl(std::string_view url) { return url.substr(0, url.find('?')); }

}  // namespace elsa::proxy
