#include "elsa/engine/session_process.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "test_util.h"

namespace elsa {
namespace {

using testing::TempDir;

const std::vector<std::string> kEnv = {"PATH=/usr/bin:/bin"};

TEST(SessionProcess, RunsAsInitOfItsOwnPidNamespaceWithOutputCaptured) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  auto pipe = OutputPipe::Create();
  ASSERT_TRUE(pipe.ok());
  EXPECT_EQ(pipe->criu_key.rfind("pipe:[", 0), 0u);
  auto pid = SpawnInPidNamespace({{"sh", "-c", "echo pid=$$ sid=$(ps -o sid= -p $$ | tr -d ' '); echo err >&2"}, kEnv, dir.path()}, *pipe);
  ASSERT_TRUE(pid.ok()) << pid.status().message();
  pipe->write_end.Reset();

  std::mutex mu;
  std::condition_variable cv;
  bool exited = false;
  int code = -1;
  {
    auto sup = SessionSupervisor::Start(*pid, std::move(pipe->read_end), dir / "out.log", [&](int c, int) {
      std::lock_guard lock(mu);
      exited = true;
      code = c;
      cv.notify_all();
    });
    ASSERT_TRUE(sup.ok()) << sup.status().message();
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return exited; }));
  }
  EXPECT_EQ(code, 0);
  auto log = ReadFile(dir / "out.log");
  ASSERT_TRUE(log.ok());
  EXPECT_NE(log->find("pid=1 "), std::string::npos) << *log;  // init of a new PID namespace
  EXPECT_NE(log->find("err"), std::string::npos) << *log;
}

// A session that writes without end must not fill the agent's disk: its log is rotated at
// SessionLogLimits' size (8 MiB by default) and only `keep` (2) older files are kept.
TEST(SessionProcess, ALogIsRotatedAndStaysWithinItsBound) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  auto pipe = OutputPipe::Create();
  ASSERT_TRUE(pipe.ok());
  auto pid = SpawnInPidNamespace(
      {{"sh", "-c", "yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde | head -c 41943040; echo the-end"},
       kEnv, dir.path()},
      *pipe);
  ASSERT_TRUE(pid.ok()) << pid.status().message();
  pipe->write_end.Reset();
  std::mutex mu;
  std::condition_variable cv;
  bool exited = false;
  {
    auto sup = SessionSupervisor::Start(*pid, std::move(pipe->read_end), dir / "out.log", [&](int, int) {
      std::lock_guard lock(mu);
      exited = true;
      cv.notify_all();
    });
    ASSERT_TRUE(sup.ok()) << sup.status().message();
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return exited; }));
  }
  uint64_t total = 0;
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    files.push_back(e.path().filename());
    total += e.file_size();
  }
  std::sort(files.begin(), files.end());
  EXPECT_LE(total, 3u * (8u << 20)) << "40 MiB of output, bounded to the log and 2 older ones";
  EXPECT_EQ(files, (std::vector<std::string>{"out.log", "out.log.1", "out.log.2"}));
  auto log = ReadFile(dir / "out.log", 64u << 20);
  ASSERT_TRUE(log.ok());
  EXPECT_EQ(log->substr(log->size() - 8), "the-end\n") << "the newest output is in the current log";
}

TEST(SessionProcess, ReportsAMissingCommandOrDirectory) {
  auto pipe = OutputPipe::Create();
  ASSERT_TRUE(pipe.ok());
  auto missing = SpawnInPidNamespace({{"no-such-command-xyz"}, kEnv, "/"}, *pipe);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-command-xyz"), std::string::npos);

  auto bad_dir = SpawnInPidNamespace({{"true"}, kEnv, "/no/such/dir"}, *pipe);
  ASSERT_FALSE(bad_dir.ok());
  EXPECT_NE(bad_dir.status().message().find("/no/such/dir"), std::string::npos);
}

TEST(SessionProcess, SupervisorReportsAKill) {
  ELSA_REQUIRE_ROOT();
  TempDir dir;
  auto pipe = OutputPipe::Create();
  ASSERT_TRUE(pipe.ok());
  auto pid = SpawnInPidNamespace({{"sh", "-c", "sleep 1000 & sleep 1000"}, kEnv, "/"}, *pipe);
  ASSERT_TRUE(pid.ok());
  pipe->write_end.Reset();
  std::mutex mu;
  std::condition_variable cv;
  int signal = 0;
  auto sup = SessionSupervisor::Start(*pid, std::move(pipe->read_end), dir / "out.log", [&](int, int s) {
    std::lock_guard lock(mu);
    signal = s;
    cv.notify_all();
  });
  ASSERT_TRUE(sup.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  TreeStats stats = ProcessTreeStats(*pid);
  EXPECT_GE(stats.processes, 3);  // sh and two sleeps
  EXPECT_GT(stats.rss_bytes, 0u);
  ::kill(*pid, SIGKILL);  // ends the whole namespace
  std::unique_lock lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return signal != 0; }));
  EXPECT_EQ(signal, SIGKILL);
}

}  // namespace
}  // namespace elsa
