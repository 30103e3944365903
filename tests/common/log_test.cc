// The agent's log in both formats: text for people, one JSON object a line for log shippers.
#include "elsa/log.h"

#include <gtest/gtest.h>

#include <chrono>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace elsa {
namespace {

using std::chrono::microseconds;
using std::chrono::seconds;
using std::chrono::system_clock;

// A Logger whose lines land in `lines`, as elsad's land in its log.
Logger CapturingLogger(LogFormat format, std::vector<std::string>* lines) {
  return Logger(ProgramLogSink("elsad", format, [lines](std::string_view line) { lines->emplace_back(line); }));
}

nlohmann::json ParseLine(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n') << "one object a line";
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "no newline inside the object";
  return nlohmann::json::parse(line);
}

TEST(LogJson, EveryLineIsAnObjectWithTimeLevelMessageAndContext) {
  std::vector<std::string> lines;
  Logger log = CapturingLogger(LogFormat::kJson, &lines);
  log.Info("agent up");
  log.With("session", "alice").With("op", "migrate").Warning("peer slow");
  log.With("op", "checkpoint").Error("disk full");
  ASSERT_EQ(lines.size(), 3u);

  const std::regex iso_utc_micros(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)");
  nlohmann::json first = ParseLine(lines[0]);
  EXPECT_TRUE(std::regex_match(first.at("time").get<std::string>(), iso_utc_micros)) << first;
  EXPECT_EQ(first.at("level"), "info");
  EXPECT_EQ(first.at("message"), "agent up");
  EXPECT_EQ(first.size(), 3u) << "no context, no other keys: " << first;

  nlohmann::json second = ParseLine(lines[1]);
  EXPECT_EQ(second.at("level"), "warning");
  EXPECT_EQ(second.at("message"), "peer slow");
  EXPECT_EQ(second.at("session"), "alice");
  EXPECT_EQ(second.at("op"), "migrate");
  EXPECT_EQ(lines[1].rfind(R"({"time":)", 0), 0u) << "time comes first, for people reading it raw: " << lines[1];

  nlohmann::json third = ParseLine(lines[2]);
  EXPECT_EQ(third.at("level"), "error");
  EXPECT_EQ(third.at("op"), "checkpoint");
  EXPECT_FALSE(third.contains("session"));
}

TEST(LogJson, BytesThatAreNotUtf8NeitherThrowNorBreakTheLine) {
  std::vector<std::string> lines;
  Logger log = CapturingLogger(LogFormat::kJson, &lines);
  const std::string latin1_name = "caf\xe9.txt has bad size";  // a file name quoted from CRIU's log
  EXPECT_NO_THROW(log.With("session", "b\xff\xfe").Error(latin1_name));
  ASSERT_EQ(lines.size(), 1u);
  nlohmann::json line = ParseLine(lines[0]);
  EXPECT_EQ(line.at("message"), "caf\xef\xbf\xbd.txt has bad size") << "replaced by U+FFFD";
  EXPECT_EQ(line.at("session"), "b\xef\xbf\xbd\xef\xbf\xbd");
}

TEST(LogJson, ContextNeverHidesTheLinesOwnFieldsAndTheInnermostValueWins) {
  nlohmann::json line = nlohmann::json::parse(JsonLogLine(
      system_clock::time_point{}, "info", "the message",
      {{"message", "a field of the caller"}, {"session", "outer"}, {"session", "inner"}}));
  EXPECT_EQ(line.at("message"), "the message");
  EXPECT_EQ(line.at("context_message"), "a field of the caller");
  EXPECT_EQ(line.at("session"), "inner");
}

TEST(LogJson, TimeIsUtcWithMicroseconds) {
  EXPECT_EQ(FormatUtcMicros(system_clock::time_point(seconds(1700000000) + microseconds(123456))),
            "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(FormatUtcMicros(system_clock::time_point(seconds(1700000000))), "2023-11-14T22:13:20.000000Z");
  EXPECT_EQ(FormatUtcMicros(system_clock::time_point(microseconds(-1))), "1969-12-31T23:59:59.999999Z");
}

TEST(LogText, StaysWhatElsadAlwaysPrinted) {
  std::vector<std::string> lines;
  Logger log = CapturingLogger(LogFormat::kText, &lines);
  log.Info("serving /run/elsa/elsad.sock");
  log.With("session", "alice").With("op", "checkpoint").Warning("slow");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "elsad: serving /run/elsa/elsad.sock\n");
  EXPECT_EQ(lines[1], "elsad: warning: slow [session=alice op=checkpoint]\n");
}

TEST(LogFormatFlag, TakesTextOrJsonOnly) {
  ASSERT_TRUE(ParseLogFormat("text").ok());
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  Result<LogFormat> bad = ParseLogFormat("yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'yaml' is not text or json"), std::string::npos);
}

}  // namespace
}  // namespace elsa
