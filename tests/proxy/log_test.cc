// elsa-proxy's log: CHP's text lines by default, elsad's JSON lines with --log-format json.
#include "log.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace elsa::proxy {
namespace {

// What a Logger wrote to a pipe, one string per line.
std::vector<std::string> LinesFrom(int read_fd) {
  std::string all;
  char buf[4096];
  for (ssize_t n; (n = ::read(read_fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<size_t>(n));
  std::vector<std::string> lines;
  for (size_t start = 0, end; (end = all.find('\n', start)) != std::string::npos; start = end + 1)
    lines.push_back(all.substr(start, end - start));
  return lines;
}

TEST(Log, JsonLinesParseAndKeepTheirFields) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  Logger log(LogLevel::kInfo, p[1], LogFormat::kJson);
  log.Debug("below the level: not written");
  log.Info("Proxying http://*:8000 with ", 2, " threads");
  log.Warn("route /user/caf\xe9 paused");  // not UTF-8: replaced, never thrown on
  ::close(p[1]);
  std::vector<std::string> lines = LinesFrom(p[0]);
  ::close(p[0]);
  ASSERT_EQ(lines.size(), 2u);
  auto info = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(info.at("level"), "info");
  EXPECT_EQ(info.at("message"), "Proxying http://*:8000 with 2 threads");
  EXPECT_EQ(info.at("time").get<std::string>().size(), std::string("2025-01-31T09:04:05.123456Z").size());
  auto warn = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(warn.at("level"), "warning") << "elsad's name for it";
  EXPECT_EQ(warn.at("message"), "route /user/caf\xef\xbf\xbd paused");
}

TEST(Log, TextLinesStayChps) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  Logger(LogLevel::kInfo, p[1]).Warn("careful");
  ::close(p[1]);
  std::vector<std::string> lines = LinesFrom(p[0]);
  ::close(p[0]);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find(" [ElsaProxy] warn: careful"), std::string::npos) << lines[0];
}

}  // namespace
}  // namespace elsa::proxy
