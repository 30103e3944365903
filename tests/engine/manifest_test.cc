#include "elsa/engine/manifest.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace elsa {
namespace {

Manifest Sample() {
  Manifest m;
  m.id = "alice-20261124-090000-001";
  m.created_at = "2026-11-24T09:00:00.001Z";
  m.host = "hostA";
  m.kernel = "6.18";
  m.criu_version = "4.2.1";
  m.session_name = "alice";
  m.command = {"jupyter-server", "--port=8888"};
  m.workdir = "/home/alice";
  m.session_started_at = "2026-11-24T08:00:00.000Z";
  m.source_pid = 1234;
  m.output_pipes = {"pipe:[42]"};
  m.leave_running = true;
  m.dump_seconds = 0.25;
  m.files = {{"pages-1.img", 4096, 0x0123456789abcdefULL}, {"core-1.img", 10, 7}};
  return m;
}

TEST(Manifest, RoundTripsEveryField) {
  Manifest m = Sample();
  auto back = ManifestFromJson(ManifestToJson(m));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->id, m.id);
  EXPECT_EQ(back->command, m.command);
  EXPECT_EQ(back->output_pipes, m.output_pipes);
  EXPECT_EQ(back->source_pid, 1234);
  EXPECT_TRUE(back->leave_running);
  ASSERT_EQ(back->files.size(), 2u);
  EXPECT_EQ(back->files[0].name, "pages-1.img");
  EXPECT_EQ(back->files[0].xxh3, 0x0123456789abcdefULL);
  EXPECT_EQ(back->TotalBytes(), 4106u);
}

TEST(Manifest, RejectsWhatIsNotAManifest) {
  for (const char* text : {"", "not json", "[]", "42", "{}", R"({"format":"elsa-checkpoint/9"})"}) {
    auto m = ManifestFromJson(text);
    ASSERT_FALSE(m.ok()) << text;
    EXPECT_EQ(m.status().code(), StatusCode::kCorruption) << text;
  }
}

TEST(Manifest, RejectsMistypedAndMissingFields) {
  nlohmann::json j = nlohmann::json::parse(ManifestToJson(Sample()));
  j["session"]["command"] = "not a list";
  auto m = ManifestFromJson(j.dump());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("command"), std::string::npos);

  j = nlohmann::json::parse(ManifestToJson(Sample()));
  j.erase("files");
  EXPECT_FALSE(ManifestFromJson(j.dump()).ok());
}

TEST(Manifest, RejectsFileNamesThatEscapeTheDirectory) {
  for (const char* bad : {"../etc/passwd", "a/b", "..", ".", ""}) {
    nlohmann::json j = nlohmann::json::parse(ManifestToJson(Sample()));
    j["files"][0]["name"] = bad;
    auto m = ManifestFromJson(j.dump());
    ASSERT_FALSE(m.ok()) << bad;
    EXPECT_EQ(m.status().code(), StatusCode::kCorruption);
  }
}

TEST(Manifest, RejectsBadChecksumsAndIds) {
  nlohmann::json j = nlohmann::json::parse(ManifestToJson(Sample()));
  j["files"][0]["xxh3"] = "xyz";
  EXPECT_FALSE(ManifestFromJson(j.dump()).ok());
  j = nlohmann::json::parse(ManifestToJson(Sample()));
  j["id"] = "../../x";
  EXPECT_FALSE(ManifestFromJson(j.dump()).ok());
}

TEST(Identifier, AcceptsOrdinaryNames) {
  for (const char* ok : {"alice", "a", "alice-2026.1_x", "A9"}) EXPECT_TRUE(ValidateIdentifier("id", ok).ok()) << ok;
}

TEST(Identifier, RejectsPathsAndOddCharacters) {
  for (const char* bad : {"", "..", ".hidden", "-flag", "a/b", "a b", "x\n", "../x", "é"}) {
    Status s = ValidateIdentifier("checkpoint id", bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("checkpoint id"), std::string::npos);
  }
  EXPECT_FALSE(ValidateIdentifier("id", std::string(129, 'a')).ok());
}

}  // namespace
}  // namespace elsa
