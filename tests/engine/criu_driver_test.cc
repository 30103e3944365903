#include "elsa/engine/criu_driver.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "elsa/engine/session_process.h"
#include "elsa/page_server/criu_stats.h"
#include "test_util.h"

namespace elsa {
namespace {

CriuDumpRequest DumpOf(pid_t pid, int dir_fd) {
  CriuDumpRequest r;
  r.pid = pid;
  r.images_dir_fd = dir_fd;
  r.work_dir_fd = dir_fd;
  return r;
}

using testing::TempDir;

class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() { had_ ? (void)::setenv(name_, old_.c_str(), 1) : (void)::unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(CriuLocate, MissingEverywhereNamesTheBootstrap) {
  ScopedEnv path("PATH", "/nonexistent-bin");
  auto r = CriuDriver::Locate({"", "/nonexistent-prefix"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("tools/bootstrap"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("/nonexistent-prefix/sbin/criu"), std::string::npos);
}

TEST(CriuLocate, AnExplicitBinaryMustExist) {
  auto r = CriuDriver::Locate({"/nonexistent/criu", ELSA_DEFAULT_CRIU_PREFIX});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/criu"), std::string::npos);
}

TEST(CriuLog, SummaryKeepsErrorsWithContext) {
  std::string log =
      "(00.001) Version: 4.2.1\n(00.002) Dumping task 1\n(00.003) about to fail\n"
      "(00.004) Error (criu/cr-dump.c:1): Can't dump thing\n(00.005) Unlock network\n";
  std::string s = SummarizeCriuLog(log);
  EXPECT_NE(s.find("about to fail"), std::string::npos);
  EXPECT_NE(s.find("Can't dump thing"), std::string::npos);
  EXPECT_EQ(s.find("Version"), std::string::npos);
}

TEST(CriuLog, NamesTheNetworkLockTableOfTheDumpWorker) {
  std::string log =
      "(00.000000) CRIU run id = 9393d5c6-53d6-4670-a199-8ab2ff745222\n"
      "(00.000000) CRIU run id = 8977ae89-ec23-4bbc-b1c0-9be9b9e9a722\n(00.01) net: Lock network\n";
  EXPECT_EQ(CriuNetworkLockTable(log), "inet CRIU-8977ae89-ec23-4bbc-b1");
  EXPECT_EQ(CriuNetworkLockTable("no id here"), "");
  EXPECT_EQ(CriuNetworkLockTable("CRIU run id = x;rm -rf /\n"), "");
}

TEST(CriuLog, SummaryFallsBackToTheTail) {
  EXPECT_NE(SummarizeCriuLog("a\nb\nlast line\n").find("last line"), std::string::npos);
}

// Real CRIU from the bootstrap: dump a small tree and restore it as our child.
class CriuDriverReal : public ::testing::Test {
 protected:
  void SetUp() override {
    ELSA_REQUIRE_ROOT();
    auto bin = CriuDriver::Locate({"", ELSA_DEFAULT_CRIU_PREFIX});
    ASSERT_TRUE(bin.ok()) << bin.status().message();
    binary_ = *bin;
  }
  std::string binary_;
};

TEST_F(CriuDriverReal, ReportsItsVersion) {
  auto v = CriuDriver(binary_).Version();
  ASSERT_TRUE(v.ok()) << v.status().message();
  EXPECT_EQ(v->rfind("4.", 0), 0u) << *v;
}

TEST_F(CriuDriverReal, DumpsAndRestoresAProcessTree) {
  TempDir dir;
  auto pipe = OutputPipe::Create();
  ASSERT_TRUE(pipe.ok());
  // Its own cwd: CRIU's parasite makes `proc.crtools` there, and parallel tests must not share it.
  auto pid = SpawnInPidNamespace({{"/bin/sh", "-c", "while :; do sleep 0.2; done"}, {"PATH=/usr/bin:/bin"}, dir.path()},
                                 *pipe);
  ASSERT_TRUE(pid.ok()) << pid.status().message();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  CriuDriver criu(binary_);
  auto images = OpenDirectory(dir.path());
  ASSERT_TRUE(images.ok());
  std::vector<std::string> events;
  auto dumped = criu.Dump(DumpOf(*pid, images->get()),
                          [&](const std::string& e) { events.push_back(e); });
  ASSERT_TRUE(dumped.ok()) << dumped.status().message();
  int status = 0;
  ASSERT_EQ(::waitpid(*pid, &status, 0), *pid);
  EXPECT_TRUE(WIFSIGNALED(status));  // CRIU ended the tree after dumping it
  EXPECT_FALSE(events.empty());
  EXPECT_TRUE(std::filesystem::exists(dir / "inventory.img"));
  // CRIU's own timings, which a migration reports as its freeze time.
  auto stats = page_server::ReadCriuDumpStats(dir.path());
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  EXPECT_GT(stats->freezing_seconds, 0);
  EXPECT_GE(stats->frozen_seconds, stats->freezing_seconds);
  EXPECT_GT(stats->pages_scanned, 0u);

  auto restored = criu.Restore({images->get(), images->get(), {{pipe->criu_key, pipe->write_end.get()}}, false, {}});
  ASSERT_TRUE(restored.ok()) << restored.status().message();
  ASSERT_GT(restored->restored_pid, 0);
  EXPECT_EQ(::kill(restored->restored_pid, 0), 0);
  ::kill(restored->restored_pid, SIGKILL);
  // The restored root is our child: we can reap it.
  EXPECT_EQ(::waitpid(restored->restored_pid, &status, 0), restored->restored_pid);
}

TEST_F(CriuDriverReal, AFailedDumpSaysWhyFromTheLog) {
  TempDir dir;
  auto images = OpenDirectory(dir.path());
  ASSERT_TRUE(images.ok());
  // No such process: CRIU fails, and the error carries its log's lines.
  auto dumped = CriuDriver(binary_).Dump(DumpOf(999999, images->get()));
  ASSERT_FALSE(dumped.ok());
  EXPECT_EQ(dumped.status().code(), StatusCode::kExternalFailure);
  EXPECT_NE(dumped.status().message().find("criu dump failed"), std::string::npos);
  EXPECT_NE(dumped.status().message().find(CriuDriver::kDumpLog), std::string::npos) << dumped.status().message();
}

}  // namespace
}  // namespace elsa
